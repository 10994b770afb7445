"""A procedural world of captioned shapes, a tiny base pretrained on it, a judge, and a concept to learn.

Issue 23: with it the trainer tests check that a LoRA *learns* (tests/trainer/test_learning.py),
not only that its loss is finite. ``python -m tinyworld`` builds the cached bases (``make tinybase``).
"""
