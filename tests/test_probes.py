"""Tests of training.probes: deterministic generators with correct targets, and accuracy."""

from __future__ import annotations

import pytest
import torch

from training import probes as P
from training.scales import SCALES

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "mqar": dict(vocab_size=64, seq_len=64, num_kv_pairs=8),
    "noisy_recall": dict(vocab_size=64, seq_len=64, num_keys=8),
    "fuzzy_recall": dict(vocab_size=16, seq_len=64, num_keys=4),
    "selective_copy": dict(vocab_size=32, seq_len=64, num_tokens=8),
    "compression": dict(vocab_size=8, seq_len=32),
    "memorization": dict(vocab_size=64, seq_len=16, num_keys=32),
}


@pytest.mark.parametrize("task", list(P.GENERATORS))
def test_generators_deterministic_and_in_range(task):
    spec = P.probe(task, **SMALL[task])
    x1, y1 = P.generate(spec, 8, 5)
    x2, y2 = P.generate(spec, 8, 5)
    x3, _ = P.generate(spec, 8, 6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == y1.shape == (8, spec.seq_len) and x1.dtype == torch.long
    assert x1.min() >= 0 and x1.max() < spec.vocab_size
    scored = y1[y1 != P.IGNORE]
    assert scored.numel() > 0 and scored.min() >= 0 and scored.max() < spec.vocab_size


def _recall_oracle(x, y, key_len=1):
    """Check every scored target equals what followed the same key context earlier."""
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        for t, target in enumerate(row_y):
            if target == P.IGNORE:
                continue
            ctx = tuple(row_x[t - key_len + 1 : t + 1])
            earlier = [row_x[s + 1] for s in range(key_len - 1, t) if tuple(row_x[s - key_len + 1 : s + 1]) == ctx]
            assert target in earlier, (t, ctx)


def test_mqar_targets_are_recallable():
    spec = P.probe("mqar", **SMALL["mqar"], random_non_queries=False)
    x, y = P.generate(spec, 16, 0)
    assert int((y != P.IGNORE).sum(1).min()) == 8  # one query per pair
    _recall_oracle(x, y)


def test_noisy_and_fuzzy_recall_targets_are_recallable():
    x, y = P.generate(P.probe("noisy_recall", **SMALL["noisy_recall"]), 16, 1)
    _recall_oracle(x, y)
    x, y = P.generate(P.probe("fuzzy_recall", **SMALL["fuzzy_recall"]), 16, 1)
    # the first value token follows the full key motif; the second the first value token in context
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        for t, target in enumerate(row_y):
            if target != P.IGNORE and t % 4 == 1:
                ctx = tuple(row_x[t - 1 : t + 1])
                assert any(tuple(row_x[s - 1 : s + 1]) == ctx and row_x[s + 1] == target for s in range(1, t - 3, 4))


def test_selective_copy_and_compression_layout():
    x, y = P.generate(P.probe("selective_copy", **SMALL["selective_copy"]), 4, 2)
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        marker = row_x.index(1)
        content = [t for t in row_x[:marker] if t != 0]
        assert [t for t in row_y if t != P.IGNORE] == content
    x, y = P.generate(P.probe("compression", **SMALL["compression"]), 4, 2)
    sep = SMALL["compression"]["vocab_size"] - 1
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        m = row_x.index(sep)
        scored = [t for t in row_y if t != P.IGNORE]
        assert scored == row_x[: len(scored)] and row_y[m] == row_x[0]


def test_memorization_table_is_fixed():
    spec = P.probe("memorization", **SMALL["memorization"])
    x1, y1 = P.generate(spec, 8, 0)
    x2, y2 = P.generate(spec, 8, 1)
    table = {}
    for xs, ys in ((x1, y1), (x2, y2)):
        for k, v in zip(xs[:, 0::2].flatten().tolist(), ys[:, 0::2].flatten().tolist()):
            assert table.setdefault(k, v) == v


class _Oracle(torch.nn.Module):
    """Predicts the true targets (logits peaked on them) where known, token 0 elsewhere."""

    def __init__(self, targets, vocab):
        super().__init__()
        self.targets, self.vocab = targets, vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(*x.shape, self.vocab)
        t = self.targets[: x.shape[0]].clamp(min=0)
        return out.scatter(2, t[..., None], 1.0)


def test_accuracy_counts_only_scored_positions():
    spec = P.probe("mqar", **SMALL["mqar"])
    x, y = P.generate(spec, 8, 0)
    assert P.accuracy(_Oracle(y, spec.vocab_size), x, y, batch_size=8) == 1.0
    wrong = y.clone()
    wrong[wrong != P.IGNORE] = (wrong[wrong != P.IGNORE] + 1) % spec.vocab_size
    assert P.accuracy(_Oracle(wrong, spec.vocab_size), x, y, batch_size=8) == 0.0


def test_scale_probe_specs_generate():
    for scale in SCALES.values():
        for spec in scale.probes:
            x, y = P.generate(spec, 2, 0)
            assert x.shape == (2, spec.seq_len) and (y != P.IGNORE).any()
