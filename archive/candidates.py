"""The candidate set (docs/ARCHITECTURE.md step 1): the top accepted experiments by fitness; parents are
drawn rank-weighted from ranks 1..top_k, references uniformly from the reference ranks
(11..50 by default).

Ranking: accepted experiments with a fitness, highest first (ties: older first); accepted
experiments not measured yet (fitness None, e.g. a new lab's seed) rank after them, oldest
first, so a fresh lab can still sample its seed.

Parents come only from designs evaluated on at least ``min_parent_seeds`` seeds (default 2: a
one-seed result may be luck), as long as there is one; otherwise (a lab made before multi-seed
evaluation, or before the seed is measured) from all candidates.

Cold start: with fewer candidates than ``top_k`` the parent comes from all of them; with
fewer than the first reference rank, references come from the candidates other than the parent
(best first is not favoured: uniformly), so early experiments still get some.
"""

from __future__ import annotations

import random
from typing import Any

from archive.record import ExperimentRecord


class NoCandidates(RuntimeError):
    """The archive has no accepted experiment to sample from."""


def _rng_choice(rng: Any, items: list[Any], weights: list[float]) -> Any:
    if hasattr(rng, "choices"):
        return rng.choices(items, weights=weights, k=1)[0]
    total = float(sum(weights))
    return items[int(rng.choice(len(items), p=[w / total for w in weights]))]  # numpy Generator


def _rng_sample(rng: Any, items: list[Any], k: int) -> list[Any]:
    if hasattr(rng, "sample"):
        return rng.sample(items, k)
    return [items[int(i)] for i in rng.choice(len(items), size=k, replace=False)]  # numpy


class CandidateSet:
    """Sampling over an :class:`~archive.index.ExperimentIndex`; records come from the store."""

    def __init__(self, index: Any, store: Any, top_k: int = 10, reference_ranks: tuple[int, int] = (11, 50),
                 n_references: int = 4, min_parent_seeds: int = 2) -> None:
        self.index = index
        self.store = store
        self.top_k = top_k
        self.min_parent_seeds = int(min_parent_seeds)
        self.reference_ranks = (int(reference_ranks[0]), int(reference_ranks[1]))
        self.n_references = n_references

    @staticmethod
    def rank(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Accepted documents in candidate order (see the module doc)."""
        acc = [d for d in docs if d.get("status") == "accepted"]
        measured = sorted((d for d in acc if d.get("fitness") is not None),
                          key=lambda d: (-float(d["fitness"]), int(d["id"])))
        unmeasured = sorted((d for d in acc if d.get("fitness") is None), key=lambda d: int(d["id"]))
        return measured + unmeasured

    def top(self, n: int | None = None) -> list[dict[str, Any]]:
        """The first ``n`` (default: the last reference rank, 50) candidates' index documents."""
        n = self.reference_ranks[1] if n is None else n
        return self.rank(self.index.all())[:n]

    def parent_pool(self) -> list[dict[str, Any]]:
        """Ranks 1..top_k among the designs with at least ``min_parent_seeds`` seeds (all
        candidates when none has them)."""
        top = self.rank(self.index.all())
        multi = [d for d in top if int(d.get("n_seeds") or 0) >= self.min_parent_seeds]
        return (multi or top[: self.reference_ranks[1]])[: self.top_k]

    def reference_pool(self, exclude: set[str] | None = None) -> list[dict[str, Any]]:
        """Ranks first..last of the reference ranks, or, at cold start (fewer candidates than
        the first reference rank), every candidate not excluded."""
        top = self.top()
        first, last = self.reference_ranks
        pool = top[first - 1:last] if len(top) >= first else top
        exclude = exclude or set()
        return [d for d in pool if d["id"] not in exclude]

    def sample_parent_doc(self, rng: Any) -> dict[str, Any]:
        """A parent's index document, drawn with weight ``top_k + 1 - rank``."""
        pool = self.parent_pool()
        if not pool:
            raise NoCandidates("the archive has no accepted experiment to start from")
        weights = [float(self.top_k + 1 - r) for r in range(1, len(pool) + 1)]
        return _rng_choice(rng, pool, weights)

    def sample_parent(self, rng: Any | None = None) -> ExperimentRecord:
        """A parent record (see :meth:`sample_parent_doc`)."""
        return self.store.get(self.sample_parent_doc(rng or random.Random())["id"])

    def sample_references(self, rng: Any | None = None, k: int | None = None,
                          exclude: set[str] | None = None) -> list[ExperimentRecord]:
        """Up to ``k`` (default ``n_references``) distinct reference records, uniformly from the
        reference pool, never one of ``exclude`` (pass the parent's id)."""
        rng = rng or random.Random()
        k = self.n_references if k is None else k
        pool = self.reference_pool(exclude)
        chosen = _rng_sample(rng, pool, min(k, len(pool)))
        return [self.store.get(d["id"]) for d in chosen]
