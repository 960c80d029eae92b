"""Early stopping of a language-model run at its half-way checkpoint (docs/NOISE.md).

At step ``lm_steps // 2`` of the LM run the model's **checkpoint loss** is measured: the mean
cross-entropy (nats per byte) of the model as it is after that many updates, in eval mode, on
``n`` fixed, evenly spaced windows of the corpus's *training* split
(:func:`training.data.validation_batches` over ``corpus.train``; ``n`` = the scale's
``val_batches``). Fixed windows make the number comparable across designs and seeds without the
noise of which random batch came at that step; they lie in the training split, so it is a
training loss at that step (the model has trained on at most a few random windows overlapping
them, the same for every design).

In the sandbox the trusted harness (``training.sandbox_child``) measures it itself from the
logits the worker returns for those windows, and **decides** there (:func:`decide`): the run
is stopped when its checkpoint loss is above the seed design's (the yardstick's) mean at the same
step by more than ``spreads`` times the seed's own seed-to-seed standard deviation there. The
seed's per-seed values (:func:`reference`) come from its measurement's per-seed ``checkpoint``
entries (the same procedure), or, for a measurement that has none, from its per-seed training
loss curves (the mean of ``n`` steps centred on the checkpoint step; random batches and a model
that moves within the window, so a little noisier, unbiased to first order). Fewer than two
seeds give no spread and no decision: the run continues.

A stopped run has status ``stopped_early``: a rung of the evaluation, not a failure. Its probes
and the loss curve up to half-way are kept; it is partial, has no fitness, is never a yardstick
and never promoted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: the status of a run ended at its half-way checkpoint
STOPPED_EARLY = "stopped_early"
#: the checkpoint is at this fraction of the LM steps
CHECKPOINT_FRACTION = 0.5
#: default margin: the seed's seed-to-seed standard deviations a run may be behind it
DEFAULT_SPREADS = 1.0


def checkpoint_step(lm_steps: int) -> int | None:
    """The LM step (updates done) of the half-way checkpoint; None for runs too short for one."""
    lm_steps = int(lm_steps or 0)
    if lm_steps < 2:
        return None
    return max(1, int(lm_steps * CHECKPOINT_FRACTION))


def curve_value(curve: Sequence[Sequence[float]] | None, step: int, window: int) -> float | None:
    """The mean training loss of ``curve`` (``[[step, loss], ...]``, the loss of the batch at
    each 0-based step) over the ``window`` steps centred on ``step`` (steps ``step - window//2 ..
    step + window - window//2 - 1``); None when the curve does not cover that range."""
    if not curve:
        return None
    window = max(1, int(window))
    lo = int(step) - window // 2
    hi = lo + window - 1
    vals: dict[int, float] = {}
    for point in curve:
        try:
            s, v = int(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        if lo <= s <= hi and math.isfinite(v):
            vals[s] = v
    if len(vals) < max(1, window // 2):  # a downsampled curve may skip some steps; half is enough
        return None
    return sum(vals.values()) / len(vals)


@dataclass(frozen=True)
class Reference:
    """The seed design's checkpoint losses, one per seed (``values``), with their mean and
    sample standard deviation; ``source`` is ``checkpoint`` or ``curve``."""

    values: dict[int, float]
    step: int
    source: str

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean over seeds."""
        return sum(self.values.values()) / len(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None for one seed)."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values.values()) / (self.n - 1))


def _entries(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    seeds = metrics.get("seeds")
    if isinstance(seeds, list) and seeds and all(isinstance(e, dict) for e in seeds):
        return seeds
    return [metrics]


def reference(seed_metrics: dict[str, Any] | None, step: int, batches: int,
              scale_name: str | None = None) -> Reference | None:
    """The seed design's per-seed checkpoint losses at ``step`` from its metrics (a combined
    multi-seed dict with ``seeds`` entries, or one run): each successful seed's ``checkpoint``
    measured at the same step on the same number of batches, else (when fewer than two seeds
    have one) each seed's ``loss_curve`` averaged over ``batches`` steps centred on ``step``.
    None when the metrics are missing, at another scale, or neither source gives a value."""
    m = seed_metrics or {}
    if not m or (scale_name is not None and m.get("scale") not in (None, scale_name)):
        return None
    entries = [e for e in _entries(m) if e.get("status", "ok") == "ok"]
    by_checkpoint: dict[int, float] = {}
    by_curve: dict[int, float] = {}
    for i, e in enumerate(entries):
        seed = e.get("seed")
        key = int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else i
        cp = e.get("checkpoint")
        if isinstance(cp, dict) and cp.get("step") == step and cp.get("batches") == batches \
                and isinstance(cp.get("loss"), (int, float)) and math.isfinite(float(cp["loss"])):
            by_checkpoint[key] = float(cp["loss"])
        v = curve_value(e.get("loss_curve"), step, batches)
        if v is not None:
            by_curve[key] = v
    if len(by_checkpoint) >= 2 or (by_checkpoint and len(by_curve) < 2):
        return Reference(by_checkpoint, step, "checkpoint")
    if by_curve:
        return Reference(by_curve, step, "curve")
    return None


@dataclass
class Decision:
    """The verdict at the checkpoint. ``outcome``: ``stop``, ``continue`` or ``no_reference``
    (no spread to compare with: the run continues); ``text`` says why in one sentence."""

    outcome: str
    step: int
    loss: float | None
    spreads: float
    reference_mean: float | None = None
    reference_std: float | None = None
    reference_n: int = 0
    reference_source: str | None = None
    threshold: float | None = None
    text: str = ""
    reference_values: dict[str, float] = field(default_factory=dict)

    @property
    def stop(self) -> bool:
        """Whether the run is stopped here."""
        return self.outcome == "stop"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``metrics["early_stop"]``)."""
        return asdict(self)


def decide(loss: float | None, ref: Reference | None, spreads: float = DEFAULT_SPREADS,
           step: int | None = None, total_steps: int | None = None) -> Decision:
    """Stop when ``loss`` (the run's checkpoint loss) exceeds the reference mean by more than
    ``spreads`` x the reference's seed-to-seed standard deviation. No reference, fewer than two
    seeds or no loss: ``no_reference`` (continue). ``total_steps`` only words the text."""
    spreads = float(spreads)
    at = step if step is not None else (ref.step if ref is not None else 0)
    of = f"/{total_steps}" if total_steps else ""
    d = Decision(outcome="no_reference", step=int(at), loss=None if loss is None else float(loss), spreads=spreads)
    if ref is not None:
        d.reference_n, d.reference_source = ref.n, ref.source
        d.reference_mean = round(ref.mean, 6) if ref.n else None
        d.reference_std = None if ref.std is None else round(ref.std, 6)
        d.reference_values = {str(k): round(v, 6) for k, v in ref.values.items()}
    if loss is None or not math.isfinite(float(loss)):
        d.text = f"no checkpoint loss at step {at}{of}: the run continues"
        return d
    if ref is None or ref.std is None:
        n = 0 if ref is None else ref.n
        d.text = (f"checkpoint loss {loss:.4f} at step {at}{of}; the seed has {n} seed(s) measured there, "
                  "no spread to compare with: the run continues")
        return d
    d.threshold = round(ref.mean + spreads * ref.std, 6)
    behind = (loss - ref.mean) / ref.std if ref.std > 0 else (math.inf if loss > ref.mean else 0.0)
    where = (f"checkpoint loss {loss:.4f} at step {at}{of} vs the seed's {ref.mean:.4f} ± {ref.std:.4f} "
             f"({ref.n} seeds, {ref.source}s)")
    if loss > d.threshold:
        d.outcome = "stop"
        d.text = (f"stopped early: {where}, {behind:.1f} spreads behind (more than {spreads:g})")
    else:
        d.outcome = "continue"
        d.text = f"continued: {where}, within {spreads:g} spread(s)"
    return d


def planned_saving(lm_steps: int) -> int:
    """LM steps a stop at the checkpoint saves."""
    cs = checkpoint_step(lm_steps)
    return 0 if cs is None else int(lm_steps) - cs

