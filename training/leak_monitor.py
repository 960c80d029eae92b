"""The leak monitor: results too good to believe, judged against the lab's references.

A mixer that reads the future scores above what causal references reach. Two rules, both
calibrated on the reference baselines the lab measured at the scale (``lab/baselines/<scale>.json``:
per reference the mean over seeds, the per-seed ``spread`` and the first seed's loss curve). The
loop condenses that file with :func:`leak_reference` and sends it with the seed's metrics (the
evaluation's ``baseline``, key ``leak_reference``):

- **probe rule** (every scale with probes; the only one at the probe scale, which trains no LM):
  a probe whose accuracy, as the harness measured it, exceeds softmax attention's mean accuracy
  on the same probe by more than that probe's seed spread (``max(std, MIN_PROBE_MARGIN)``) flags
  the design (:func:`probe_flags`). The sandbox harness then re-runs the checker's causality check
  (``training.causal.causality_check``: every scored configuration, train and eval mode, grad on
  and off, parameters as trained and re-drawn) on the mixers of the trained models before the
  result is returned to be scored; a failure rejects the evaluation.
- **loss rule** (scales with an LM): the trainer's ``RunMonitor`` stops a run whose smoothed
  training loss falls more than ``tolerance`` below the seed's curve at the same step. The
  tolerance is derived from the references (:func:`loss_tolerance`): the largest gap by which any
  reference's smoothed curve falls below the seed's (after the monitor starts, as the rule
  measures it), plus a margin of ``SPREAD_Z`` times the largest relative seed spread of the
  validation loss (at least ``MIN_LOSS_MARGIN``); never below ``DEFAULT_LOSS_TOLERANCE``, the
  uncalibrated rule. A reference (Gated DeltaNet is ~9% below DeltaNet at explore) can therefore
  never trip it.

When a rule fires, its evidence goes into the metrics (``leak_monitor``).
"""

from __future__ import annotations

import math
from typing import Any

#: the reference whose probe accuracies bound what a causal mixer is believed to reach
PROBE_REFERENCE = "softmax_attention"
#: the smallest probe margin (accuracy) however small the reference's seed spread
MIN_PROBE_MARGIN = 0.01
#: the uncalibrated loss rule (``TrainConfig.leak_tolerance``): calibration only widens it
DEFAULT_LOSS_TOLERANCE = 0.10
#: the smallest margin above the references' largest gap
MIN_LOSS_MARGIN = 0.02
#: spreads (standard deviations over seeds) in the loss margin
SPREAD_Z = 3.0
#: the loss rule's smoothing and start, as ``training.trainer.TrainConfig`` has them
EMA_BETA = 0.9
MONITOR_AFTER_FRACTION = 0.1


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _probe_stats(metrics: dict) -> dict[str, dict]:
    """``{probe: {mean, std, n}}`` of a baseline's metrics (its ``spread``, else its means)."""
    spread = metrics.get("spread") if isinstance(metrics.get("spread"), dict) else {}
    out: dict[str, dict] = {}
    for name, mean in (metrics.get("probes") or {}).items():
        s = spread.get(f"probes.{name}") if isinstance(spread.get(f"probes.{name}"), dict) else {}
        m = s.get("mean", mean)
        if not _finite(m):
            continue
        std = float(s["std"]) if _finite(s.get("std")) else 0.0
        out[str(name)] = {"mean": float(m), "std": std, "n": int(s.get("n") or 1)}
    return out


def _smooth(curve: list) -> list[list[float]]:
    """The loss rule's EMA of a ``[[step, loss], ...]`` curve (as ``RunMonitor`` smooths it)."""
    out, ema = [], None
    for s, v in sorted((float(s), float(v)) for s, v in curve if _finite(v)):
        ema = v if ema is None else EMA_BETA * ema + (1 - EMA_BETA) * v
        out.append([s, ema])
    return out


def _at(curve: list[list[float]], step: float) -> float | None:
    """Linear interpolation (None outside the curve)."""
    if not curve or step < curve[0][0] or step > curve[-1][0]:
        return None
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return curve[-1][1]


def curve_gap(seed_curve: list, ref_curve: list) -> tuple[float, float | None]:
    """The largest relative gap ``(seed - ref) / seed`` of two smoothed loss curves over the steps
    the loss rule watches (from ``MONITOR_AFTER_FRACTION`` of the steps on), and its step."""
    a, b = _smooth(seed_curve), _smooth(ref_curve)
    if not a or not b:
        return 0.0, None
    start = MONITOR_AFTER_FRACTION * (max(a[-1][0], b[-1][0]) + 1)
    best, at = -math.inf, None
    for s, v in b:
        ref = _at(a, s)
        if s < start or ref is None or ref <= 0:
            continue
        gap = (ref - v) / ref
        if gap > best:
            best, at = gap, s
    return (best, at) if at is not None else (0.0, None)


def _rel_std(metrics: dict, key: str = "val_loss") -> float:
    s = (metrics.get("spread") or {}).get(key) if isinstance(metrics.get("spread"), dict) else None
    if isinstance(s, dict) and _finite(s.get("std")) and _finite(s.get("mean")) and float(s["mean"]) > 0:
        return float(s["std"]) / float(s["mean"])
    return 0.0


def loss_tolerance(seed: dict | None, references: dict[str, dict]) -> dict:
    """The loss rule calibrated on the references: ``{tolerance, default, margin, max_gap,
    by_reference: {name: {max_gap, at_step, rel_std}}, calibrated}``. ``seed`` and each reference
    are baseline metrics (``loss_curve``, ``spread``); without a seed curve or a reference curve the
    tolerance stays ``DEFAULT_LOSS_TOLERANCE`` (``calibrated`` false)."""
    out: dict[str, Any] = {"tolerance": DEFAULT_LOSS_TOLERANCE, "default": DEFAULT_LOSS_TOLERANCE,
                           "margin": None, "max_gap": None, "by_reference": {}, "calibrated": False}
    curve = (seed or {}).get("loss_curve") or []
    if not curve:
        return out
    spreads = [_rel_std(seed or {})]
    gaps = []
    for name, m in sorted(references.items()):
        ref_curve = (m or {}).get("loss_curve") or []
        if not ref_curve:
            continue
        gap, step = curve_gap(curve, ref_curve)
        rs = _rel_std(m)
        spreads.append(rs)
        gaps.append(gap)
        out["by_reference"][name] = {"max_gap": round(gap, 5), "at_step": step, "rel_std": round(rs, 5)}
    if not gaps:
        return out
    margin = max(MIN_LOSS_MARGIN, SPREAD_Z * max(spreads))
    max_gap = max(0.0, max(gaps))
    out.update(margin=round(margin, 5), max_gap=round(max_gap, 5), calibrated=True,
               tolerance=round(max(DEFAULT_LOSS_TOLERANCE, max_gap + margin), 5))
    return out


def leak_reference(baselines: dict[str, dict], seed_name: str = "deltanet") -> dict:
    """What the evaluation needs of the lab's baselines (``{mixer name: metrics}``, complete ones):
    ``{probe: {name, probes: {probe: {mean, std, n}}} | None, loss: loss_tolerance(...)}``."""
    ref = baselines.get(PROBE_REFERENCE)
    probe = {"name": PROBE_REFERENCE, "probes": _probe_stats(ref)} if isinstance(ref, dict) else None
    if probe is not None and not probe["probes"]:
        probe = None
    seed = baselines.get(seed_name)
    others = {n: m for n, m in baselines.items() if n != seed_name and isinstance(m, dict)}
    return {"probe": probe, "loss": loss_tolerance(seed if isinstance(seed, dict) else None, others)}


def probe_flags(accuracies: dict[str, float], reference: dict | None) -> list[dict]:
    """The probes whose accuracy exceeds the reference's mean by more than its seed spread:
    ``[{probe, accuracy, reference, reference_mean, spread, margin, excess}]``, largest excess
    first. ``reference`` is ``leak_reference(...)["probe"]`` (None: nothing to compare with)."""
    if not reference:
        return []
    out = []
    for name, acc in accuracies.items():
        r = (reference.get("probes") or {}).get(name)
        if not isinstance(r, dict) or not _finite(acc) or not _finite(r.get("mean")):
            continue
        spread = float(r.get("std") or 0.0)
        margin = max(spread, MIN_PROBE_MARGIN)
        excess = float(acc) - float(r["mean"])
        if excess > margin:
            out.append({"probe": name, "accuracy": round(float(acc), 5), "reference": reference.get("name"),
                        "reference_mean": round(float(r["mean"]), 5), "spread": round(spread, 5),
                        "margin": round(margin, 5), "excess": round(excess, 5)})
    return sorted(out, key=lambda f: -f["excess"])


def tolerance_of(baseline: dict | None) -> float:
    """The loss rule's tolerance for an evaluation against ``baseline`` (the seed's metrics, with
    the ``leak_reference`` the loop attached; the default without one)."""
    lr = (baseline or {}).get("leak_reference") if isinstance(baseline, dict) else None
    tol = ((lr or {}).get("loss") or {}).get("tolerance") if isinstance(lr, dict) else None
    return max(DEFAULT_LOSS_TOLERANCE, float(tol)) if _finite(tol) else DEFAULT_LOSS_TOLERANCE
