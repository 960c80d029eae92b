"""Retrieval over the cognition base: mechanics with the lexical test embedder, and quality
(recall@5 of analyst-style symptom queries) with the real local embedding model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from archive.embed import EmbedderUnavailable, HashEmbedder, get_embedder
from corpus.retrieval import (
    DEFAULT_SCHEME, SCHEMES, CognitionBase, load_eval_queries, recall_at_k, soft_max_pool,
)
from corpus.schema import ENTRIES_DIR, LEVERS, load_entries

SAMPLE = ["2006.16236", "2102.03902", "2312.00752", "2307.08621", "2309.17453", "1911.02150"]


class CountingEmbedder:
    """Wraps an embedder and counts the texts it was asked to embed."""

    def __init__(self, inner: HashEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[int] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner.embed(texts)


@pytest.fixture()
def sample_dir(tmp_path: Path) -> Path:
    d = tmp_path / "entries"
    d.mkdir()
    for stem in SAMPLE:
        shutil.copy(ENTRIES_DIR / f"{stem}.toml", d / f"{stem}.toml")
    return d


def test_load_builds_then_reuses_cache_and_rebuilds_on_change(sample_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    emb = CountingEmbedder(HashEmbedder(256))
    base = CognitionBase.load(emb, directory=sample_dir, cache_dir=cache)
    assert not base.from_cache and len(base) == len(SAMPLE)
    n_passages = len(base.index)
    assert n_passages == sum(len(SCHEMES[DEFAULT_SCHEME](e)) for e in base.entries)
    assert sum(emb.calls) == n_passages
    first = [(e.id, round(s, 5)) for e, s in base.search("Nyström landmarks pseudo-inverse", k=3)]

    emb.calls.clear()
    again = CognitionBase.load(emb, directory=sample_dir, cache_dir=cache)
    assert again.from_cache and emb.calls == []
    assert [(e.id, round(s, 5)) for e, s in again.search("Nyström landmarks pseudo-inverse", k=3)] == first

    # Editing one entry rebuilds the index but re-embeds only that entry's changed passages.
    p = sample_dir / "2309.17453.toml"
    p.write_text(p.read_text(encoding="utf-8").replace("four in the paper", "four, in the paper"), encoding="utf-8")
    emb.calls.clear()
    edited = CognitionBase.load(emb, directory=sample_dir, cache_dir=cache)
    assert not edited.from_cache
    assert 0 < sum(emb.calls) < n_passages

    # A damaged cached index is rebuilt, not an error.
    for f in cache.glob("*.hnsw"):
        f.write_bytes(b"garbage")
    rebuilt = CognitionBase.load(emb, directory=sample_dir, cache_dir=cache)
    assert not rebuilt.from_cache and len(rebuilt.index) == len(edited.index)


def test_search_ranks_filters_and_resolves_ids(sample_dir: Path, tmp_path: Path) -> None:
    base = CognitionBase.load(HashEmbedder(256), directory=sample_dir, cache_dir=tmp_path / "c")
    hits = base.search("Nyström landmarks pseudo-inverse of the landmark matrix", k=4)
    assert len(hits) == 4
    assert hits[0][0].id == "arXiv:2102.03902"
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({e.id for e, _ in hits}) == 4
    gated = base.search("forgetting the state", k=10, lever="data_dependent_gate")
    assert gated and all("data_dependent_gate" in e.levers for e, _ in gated)
    assert {e.id for e, _ in gated} == {e.id for e in base.entries if "data_dependent_gate" in e.levers}
    assert base.search("   ", k=3) == [] and base.search("x", k=0) == []
    with pytest.raises(ValueError, match="unknown lever"):
        base.search("x", lever="magic")
    assert base.get("2312.00752") is base.get("arXiv:2312.00752") is not None
    assert base.get("2312.00752.toml").id == "arXiv:2312.00752"
    assert base.get("9999.99999") is None


def test_soft_max_pool_between_max_and_max_plus_log_n() -> None:
    sims = [0.2, 0.5, 0.45]
    v = soft_max_pool(sims, temperature=10.0)
    assert max(sims) < v <= max(sims) + np.log(len(sims)) / 10.0
    assert soft_max_pool([0.3], 10.0) == pytest.approx(0.3)


def test_eval_queries_are_symptoms_with_known_ids() -> None:
    queries = load_eval_queries()
    entries = {e.id: e for e in load_entries()}
    assert len(queries) >= 25 and len(load_eval_queries(style="symptom")) >= 25
    assert len(load_eval_queries(style="symptom")) + len(load_eval_queries(style="paraphrase")) == len(queries)
    for text, expected in queries:
        assert expected, text
        for eid in expected:
            assert eid in entries, f"query {text!r} expects unknown entry {eid}"
            assert entries[eid].title.lower() not in text.lower(), f"query names the paper: {text!r}"
    # both halves of the corpus are exercised
    ids = {eid for _, exp in queries for eid in exp}
    assert any(i < "arXiv:2404.07" for i in ids) and any(i > "arXiv:2404.07" for i in ids)
    assert all(lv in LEVERS for e in entries.values() for lv in e.levers)


@pytest.mark.slow
def test_recall_at_5_with_the_real_embedding_model() -> None:
    try:
        emb = get_embedder()
    except EmbedderUnavailable as exc:  # pragma: no cover - the model ships with asiarch
        pytest.skip(str(exc))
    base = CognitionBase.load(emb)  # user cache: embeds only on the first run or after edits
    queries = load_eval_queries()
    recall, misses = recall_at_k(base, queries, k=5)
    symptom, _ = recall_at_k(base, load_eval_queries(style="symptom"), k=5)
    para, _ = recall_at_k(base, load_eval_queries(style="paraphrase"), k=5)
    print(f"\nrecall@5 = {recall:.3f} over {len(queries)} queries (symptom set {symptom:.3f}, "
          f"held-out paraphrases {para:.3f}), {len(base)} entries ({emb.name})")
    for text, missing, got in misses:
        print(f"  miss {missing} for {text[:70]!r}; got {got}")
    assert recall >= 0.8
    assert symptom >= 0.85
    assert para >= 0.4  # paraphrases avoiding the entries' wording are much harder for MiniLM
