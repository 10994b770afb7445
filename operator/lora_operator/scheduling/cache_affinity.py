"""Cache-aware placement: among the free nodes a job fits, one whose model cache holds its base
model, so the trainer reads it from the node's disk instead of downloading it again.

A preference only: it never changes the queue order or which jobs are admitted in a pass, only
which node a job takes among the free nodes alike to the usual choice for every job of the pass
(the same GPU count, fit by the same waiting jobs), so the swap takes nothing another job could
need; with no such node the usual choice stands (`fit.FreePool.take`).
The operator learns what a node holds from the trainers' manifests
(status.cachedOn and status.models of each job); an entry evicted since is a missed preference,
never a wrong admission.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def model_key(uri: str | None, revision: str | None = None) -> str | None:
    """What names one base model for placement: its URI, with the hub revision when one is set."""
    if not uri:
        return None
    return f"{uri}@{revision}" if revision else uri


def node_caches(reports: Iterable[tuple[str | None, Sequence[str]]]) -> dict[str, frozenset[str]]:
    """Node -> the model keys the trainers that ran there reported, from (node, model keys) pairs."""
    held: dict[str, set[str]] = {}
    for node, models in reports:
        if node and models:
            held.setdefault(node, set()).update(models)
    return {node: frozenset(models) for node, models in held.items()}


def holding(model: str | None, caches: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The nodes whose cache holds `model`."""
    if model is None:
        return frozenset()
    return frozenset(node for node, models in caches.items() if model in models)


def prefer_cached(candidates: Sequence[str], holders: frozenset[str]) -> int:
    """Index in `candidates` (free nodes that fit, in the usual order of preference) of the node
    to take: the first that holds the model, else the first."""
    return next((i for i, name in enumerate(candidates) if name in holders), 0)
