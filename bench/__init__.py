"""Benchmarks: `python bench/trainer.py` (trainer speed against a diffusers-example loop)."""
