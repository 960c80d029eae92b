"""The candidate set: ranking, parent and reference sampling, cold start."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from archive.candidates import CandidateSet, NoCandidates


class FakeStore:
    """Stands in for ArchiveStore.get (records are not needed to test the sampling)."""

    def get(self, exp_id: str):
        return type("R", (), {"id": exp_id})()


class FakeIndex:
    def __init__(self, docs):
        self.docs = docs

    def all(self):
        return list(self.docs)


def docs(n_accepted: int, n_other: int = 0, with_seed: bool = True):
    out = []
    if with_seed:
        out.append({"id": "0000", "status": "accepted", "fitness": None})
    for i in range(n_accepted):
        out.append({"id": f"{i + 1:04d}", "status": "accepted", "fitness": (i * 37 % 101) / 100})
    for j in range(n_other):
        out.append({"id": f"{n_accepted + j + 1:04d}", "status": "failed" if j % 2 else "rejected", "fitness": None})
    return out


def test_ranking_top_and_pools() -> None:
    cs = CandidateSet(FakeIndex(docs(80, 10)), FakeStore())
    top = cs.top()
    assert len(top) == 50
    fits = [d["fitness"] for d in top]
    assert fits == sorted(fits, reverse=True)
    assert all(d["status"] == "accepted" for d in top)
    assert cs.parent_pool() == top[:10]
    assert cs.reference_pool() == top[10:50]
    # the unmeasured seed ranks after every measured experiment
    assert CandidateSet.rank(docs(3))[-1]["id"] == "0000"


def test_parent_from_top10_rank_weighted_and_references_from_11_to_50() -> None:
    cs = CandidateSet(FakeIndex(docs(80, 10)), FakeStore())
    top_ids = [d["id"] for d in cs.top()]
    rng = random.Random(0)
    parents = Counter(cs.sample_parent(rng).id for _ in range(4000))
    assert set(parents) <= set(top_ids[:10]) and len(parents) == 10
    assert parents[top_ids[0]] > parents[top_ids[9]] * 4  # weights 10 vs 1
    for _ in range(200):
        p = cs.sample_parent(rng)
        refs = cs.sample_references(rng, exclude={p.id})
        assert len(refs) == 4 and len({r.id for r in refs}) == 4
        assert all(r.id in top_ids[10:50] for r in refs)
    # numpy generators work too
    g = np.random.default_rng(1)
    assert cs.sample_parent(g).id in top_ids[:10]
    assert len(cs.sample_references(g, k=3)) == 3


@pytest.mark.parametrize("n", [0, 1, 3, 9, 10, 12])
def test_cold_start(n: int) -> None:
    cs = CandidateSet(FakeIndex(docs(n, 2)), FakeStore())
    rng = random.Random(n)
    pool = [d["id"] for d in cs.top()]
    assert len(pool) == n + 1  # seed included
    for _ in range(50):
        p = cs.sample_parent(rng)
        assert p.id in pool[:10]
        refs = cs.sample_references(rng, exclude={p.id})
        assert p.id not in {r.id for r in refs}
        assert len(refs) == min(4, len(cs.reference_pool({p.id})))
        if n + 1 < 11:  # fewer than the first reference rank: any other candidate
            assert len(refs) == min(4, n)


def test_no_candidates() -> None:
    cs = CandidateSet(FakeIndex([{"id": "0000", "status": "failed", "fitness": None}]), FakeStore())
    with pytest.raises(NoCandidates):
        cs.sample_parent(random.Random(0))
    assert cs.sample_references(random.Random(0)) == []
