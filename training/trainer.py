"""The training loop shared by the probes and the byte-level language-modelling run.

AdamW with linear warm-up and cosine decay (or warm-up/stable/decay), gradient clipping, seeded
initialisation, bf16 autocast on CUDA and fp32 on CPU. Every ``log_every`` steps one line
(step, loss, tokens/s, elapsed) goes to a callback and to a log file. A run always does its fixed
number of steps (wall time is never a budget). A :class:`RunMonitor` stops a run that produces a
non-finite loss, diverges (smoothed loss rising well above its running minimum) or, given a
baseline curve, whose smoothed loss falls more than ``leak_tolerance`` below the baseline's at the
same step (suspected leak of future tokens). An optional ``guard`` callback (the evaluation's
CPU-time and hang guards, :mod:`training.guards`) is asked once per step.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

IGNORE = -100


def seed_everything(seed: int) -> None:
    """Seed Python, torch (CPU and CUDA) and numpy if present."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


@contextmanager
def torch_threads(n: int | None):
    """Temporarily use ``n`` intra-op threads (None: leave torch's setting, unless the environment
    variable ``ASIARCH_TORCH_THREADS`` names a number). On a CPU shared with other busy processes
    one thread can be many times faster than oversubscribed ones."""
    if n is None:
        env = os.environ.get("ASIARCH_TORCH_THREADS", "").strip()
        n = int(env) if env.isdigit() and int(env) > 0 else None
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class TrainConfig:
    """Optimisation and monitoring settings of one run."""

    steps: int
    lr: float = 3e-3
    warmup_steps: int | None = None  # default: 10% of steps (at least 1)
    schedule: str = "cosine"  # "cosine" or "wsd" (warm-up, stable, decay over the last 20%)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    log_every: int = 10
    seed: int = 0
    # monitor
    ema_beta: float = 0.9
    divergence_ratio: float = 1.5  # smoothed loss > ratio * running min (and > min + divergence_margin)
    divergence_margin: float = 0.5
    monitor_after_fraction: float = 0.1  # divergence/leak checks start after this fraction of steps
    leak_tolerance: float = 0.10


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based) under ``cfg``'s schedule."""
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, cfg.steps // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        decay_start = max(warm, int(cfg.steps * 0.8))
        if step < decay_start:
            return cfg.lr
        frac = (step - decay_start) / max(1, cfg.steps - decay_start)
        return floor + (cfg.lr - floor) * (1 - frac)
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    frac = (step - warm) / max(1, cfg.steps - warm)
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def baseline_loss_at(curve: Sequence[Sequence[float]], step: float) -> float | None:
    """Linear interpolation of a ``[[step, loss], ...]`` curve (None outside its range)."""
    pts = sorted((float(s), float(v)) for s, v in curve if v is not None and math.isfinite(float(v)))
    if not pts or step < pts[0][0] or step > pts[-1][0]:
        return None
    for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return pts[-1][1]


class RunMonitor:
    """Decides whether a run must stop; ``update`` returns a reason or None.

    Checks, in order: non-finite loss; divergence (EMA of the loss above
    ``divergence_ratio`` times its running minimum and more than ``divergence_margin`` nats above
    it); suspected leak (EMA more than ``leak_tolerance`` below the baseline curve's loss at the
    same step, the baseline being smoothed with the same EMA). Divergence and leak checks start
    after ``monitor_after_fraction`` of the steps.
    """

    def __init__(self, cfg: TrainConfig, baseline_curve: Sequence[Sequence[float]] | None = None):
        self.cfg = cfg
        self.ema: float | None = None
        self.min_ema = math.inf
        self.baseline = self._smooth(baseline_curve) if baseline_curve else None
        self.start_step = int(cfg.steps * cfg.monitor_after_fraction)
        #: what the leak rule saw when it fired (None until then)
        self.evidence: dict | None = None

    def _smooth(self, curve: Sequence[Sequence[float]]) -> list[list[float]]:
        out, ema = [], None
        for s, v in sorted((float(s), float(v)) for s, v in curve):
            ema = v if ema is None else self.cfg.ema_beta * ema + (1 - self.cfg.ema_beta) * v
            out.append([s, ema])
        return out

    def update(self, step: int, loss: float, elapsed: float | None = None) -> str | None:
        """Feed the loss of ``step``; returns why the run must stop, or None. ``elapsed`` is
        accepted for callers of the old signature and ignored: time never stops a run here."""
        cfg = self.cfg
        if not math.isfinite(loss):
            return f"non-finite loss ({loss}) at step {step}"
        self.ema = loss if self.ema is None else cfg.ema_beta * self.ema + (1 - cfg.ema_beta) * loss
        if step < self.start_step:
            self.min_ema = min(self.min_ema, self.ema)
            return None
        if (
            self.ema > cfg.divergence_ratio * self.min_ema
            and self.ema > self.min_ema + cfg.divergence_margin
        ):
            return (
                f"diverged at step {step}: smoothed loss {self.ema:.3f} vs running minimum {self.min_ema:.3f}"
            )
        self.min_ema = min(self.min_ema, self.ema)
        if self.baseline is not None:
            ref = baseline_loss_at(self.baseline, step)
            if ref is not None and self.ema < (1 - cfg.leak_tolerance) * ref:
                self.evidence = {"step": step, "smoothed_loss": round(self.ema, 5), "baseline_loss": round(ref, 5),
                                 "below_by": round(1 - self.ema / ref, 5) if ref else None,
                                 "tolerance": cfg.leak_tolerance}
                return (
                    f"suspected leak of future tokens at step {step}: smoothed loss {self.ema:.3f} is more "
                    f"than {cfg.leak_tolerance:.0%} below the seed baseline's {ref:.3f}"
                )
        return None


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    status: str  # "ok", "stopped" (monitor) or a guard's status ("too_slow", "hung")
    stop_reason: str | None
    steps_done: int
    train_loss: float | None  # mean loss over the last logging window
    loss_curve: list[list[float]] = field(default_factory=list)  # [[step, loss], ...] every step
    tokens_per_s: float = 0.0
    seconds: float = 0.0
    tokens: int = 0
    leak_evidence: dict | None = None  # the RunMonitor's evidence when its leak rule stopped the run


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA, nothing (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions whose target is not -100."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def train(
    model: torch.nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    on_log: Callable[[str], None] | None = None,
    log_path: str | Path | None = None,
    baseline_curve: Sequence[Sequence[float]] | None = None,
    label: str = "",
    on_step: Callable[[int, float], None] | None = None,
    guard: Callable[[], tuple[str, str] | None] | None = None,
) -> TrainResult:
    """Train ``model`` (tokens ``[B, T]`` -> logits ``[B, T, V]``) on ``batches`` of
    ``(inputs, targets)`` for ``cfg.steps`` steps, or until the monitor or ``guard`` stops it.

    Log lines look like ``[label] step 40/300 loss 2.4512 lr 2.9e-03 tok/s 31,204 elapsed 6.1s``.
    ``on_step(step, loss)`` is called every step (for progress displays). ``guard()`` is called
    before every step; a ``(status, reason)`` it returns ends the run with that status.
    """
    device = next(model.parameters()).device
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    monitor = RunMonitor(cfg, baseline_curve)
    log_file = open(log_path, "a", encoding="utf-8") if log_path else None
    prefix = f"[{label}] " if label else ""

    def emit(line: str) -> None:
        if on_log is not None:
            on_log(line)
        if log_file is not None:
            log_file.write(line + "\n")
            log_file.flush()

    curve: list[list[float]] = []
    window: list[float] = []
    tokens = 0
    steps_done = 0
    status, reason = "ok", None
    start = time.perf_counter()
    model.train()
    step = 0
    try:
        for step in range(cfg.steps):
            if guard is not None:
                verdict = guard()
                if verdict is not None:
                    status, reason = verdict
                    emit(f"{prefix}stopped before step {step}: {reason}")
                    break
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            with autocast_context(device):
                logits = model(x)
            loss = sequence_loss(logits, y)
            loss_value = float(loss.detach())
            reason = monitor.update(step, loss_value)
            if reason is not None:
                status = "stopped"
                curve.append([step, loss_value])
                emit(f"{prefix}stopped at step {step}: {reason}")
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            steps_done += 1
            tokens += x.numel()
            curve.append([step, loss_value])
            window.append(loss_value)
            if on_step is not None:
                on_step(step, loss_value)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                elapsed = time.perf_counter() - start
                emit(
                    f"{prefix}step {step + 1}/{cfg.steps} loss {sum(window) / len(window):.4f} "
                    f"lr {lr_at(step, cfg):.1e} tok/s {tokens / max(elapsed, 1e-9):,.0f} elapsed {elapsed:.1f}s"
                )
                if step + 1 < cfg.steps:
                    window = []
    finally:
        if log_file is not None:
            log_file.close()
    seconds = time.perf_counter() - start
    return TrainResult(
        status=status,
        stop_reason=reason,
        steps_done=steps_done,
        train_loss=(sum(window) / len(window)) if window else None,
        loss_curve=curve,
        tokens_per_s=tokens / max(seconds, 1e-9),
        seconds=seconds,
        tokens=tokens,
        leak_evidence=monitor.evidence,
    )


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean cross-entropy (nats per scored token) of ``model`` over fixed ``batches``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast_context(device):
            logits = model(x)
        n = int((y != IGNORE).sum())
        total += float(sequence_loss(logits, y)) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)
