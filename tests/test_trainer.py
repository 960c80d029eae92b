"""Tests of training.trainer: schedule, logging, the run monitor (NaN, divergence, leak) and the
per-step guard callback (no time budget: a run does its fixed steps)."""

from __future__ import annotations

import pytest

import math

import torch
import torch.nn as nn

from training import trainer as T
from training.data import batches

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyLM(nn.Module):
    """Embedding -> causal mixing -> head. ``peek`` > 0 lets position t see token t + peek (a leak)."""

    def __init__(self, vocab: int = 256, d: int = 32, peek: int = 0, nan_after: int | None = None):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.prev = nn.Linear(d, d)
        self.peek_proj = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)
        self.peek = peek
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.emb(x)
        prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)  # causal: token t-1
        h = h + torch.tanh(self.prev(prev))
        if self.peek:
            fut = torch.cat([h[:, self.peek :], torch.zeros_like(h[:, : self.peek])], dim=1)
            h = h + self.peek_proj(fut)
        out = self.head(h)
        if self.nan_after is not None and self.calls > self.nan_after:
            out = out * float("nan")
        return out


def _stream():
    text = (b"the quick brown fox jumps over the lazy dog; " * 400)
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).clone()


def _batches(seed=0):
    return batches(_stream(), 8, 32, torch.Generator().manual_seed(seed))


def test_schedule_warmup_and_decay():
    cfg = T.TrainConfig(steps=100, lr=1e-2, warmup_steps=10)
    assert T.lr_at(0, cfg) == 1e-3 and math.isclose(T.lr_at(9, cfg), 1e-2)
    assert T.lr_at(50, cfg) < 1e-2 and math.isclose(T.lr_at(100, cfg), 1e-3)
    wsd = T.TrainConfig(steps=100, lr=1e-2, warmup_steps=10, schedule="wsd")
    assert T.lr_at(50, wsd) == 1e-2 and T.lr_at(99, wsd) < 2e-3


def test_training_reduces_loss_and_logs(tmp_path):
    T.seed_everything(0)
    lines: list[str] = []
    log = tmp_path / "train.log"
    res = T.train(TinyLM(), _batches(), T.TrainConfig(steps=40, lr=1e-2, log_every=10), on_log=lines.append,
                  log_path=log, label="lm")
    assert res.status == "ok" and res.steps_done == 40 and len(res.loss_curve) == 40
    assert res.loss_curve[-1][1] < res.loss_curve[0][1] - 1.0
    assert len(lines) == 4 and lines[0].startswith("[lm] step 10/40 loss ")
    assert "tok/s" in lines[0] and "elapsed" in lines[0]
    assert log.read_text().splitlines() == lines
    assert res.tokens == 40 * 8 * 32 and res.tokens_per_s > 0


def test_same_seed_same_curve():
    curves = []
    for _ in range(2):
        T.seed_everything(3)
        curves.append(T.train(TinyLM(), _batches(3), T.TrainConfig(steps=5, lr=1e-2)).loss_curve)
    assert curves[0] == curves[1]


def test_planted_nan_stops_run():
    T.seed_everything(0)
    lines: list[str] = []
    res = T.train(TinyLM(nan_after=7), _batches(), T.TrainConfig(steps=30, lr=1e-2), on_log=lines.append)
    assert res.status == "stopped" and "non-finite" in res.stop_reason and res.steps_done == 7
    assert any("stopped" in line for line in lines)


def test_planted_leak_stops_against_baseline():
    T.seed_everything(0)
    cfg = T.TrainConfig(steps=60, lr=1e-2)
    base = T.train(TinyLM(), _batches(), cfg)
    assert base.status == "ok"
    # a causal model of the same family, differently seeded, is not flagged
    T.seed_everything(1)
    other = T.train(TinyLM(), _batches(), cfg, baseline_curve=base.loss_curve)
    assert other.status == "ok", other.stop_reason
    # a model that sees the next token drives the loss far below the baseline: stopped as a leak
    T.seed_everything(0)
    leak = T.train(TinyLM(peek=1), _batches(), cfg, baseline_curve=base.loss_curve)
    assert leak.status == "stopped" and "leak" in leak.stop_reason


def test_guard_callback_ends_the_run_with_its_status():
    """The guard is asked before each step; its (status, reason) ends the run there, steps
    counted exactly."""
    T.seed_everything(0)
    calls = []

    def guard():
        calls.append(1)
        return ("too_slow", "too slow: over the cap") if len(calls) > 5 else None

    res = T.train(TinyLM(), _batches(), T.TrainConfig(steps=40, lr=1e-2), guard=guard)
    assert res.status == "too_slow" and res.stop_reason == "too slow: over the cap"
    assert res.steps_done == 5 and len(res.loss_curve) == 5


def test_no_time_budget_in_the_config():
    """Wall time is never a budget: the config has no such field."""
    with pytest.raises(TypeError):
        T.TrainConfig(steps=10, time_budget_s=0.5)  # type: ignore[call-arg]


def test_monitor_divergence_rule():
    mon = T.RunMonitor(T.TrainConfig(steps=100, monitor_after_fraction=0.0, ema_beta=0.0))
    for step, loss in enumerate([3.0, 2.0, 1.5, 1.4, 1.6, 1.8]):
        assert mon.update(step, loss, 0.0) is None  # small rises are fine
    assert "diverged" in mon.update(6, 4.0, 0.0)


def test_baseline_interpolation():
    curve = [[0, 4.0], [10, 2.0]]
    assert T.baseline_loss_at(curve, 5) == 3.0
    assert T.baseline_loss_at(curve, 11) is None


def test_evaluate_loss_ignores_masked_positions():
    model = TinyLM()
    x = torch.randint(0, 256, (2, 8))
    y = torch.full((2, 8), -100)
    y[:, 3] = 5
    loss = T.evaluate_loss(model, [(x, y)])
    logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, 3], y[:, 3])
    assert math.isclose(loss, float(expected.detach()), rel_tol=1e-5)
