"""The leak monitor (training/leak_monitor.py) on synthetic baselines: the probe rule against
softmax attention's accuracies and spread, the loss rule calibrated on the references' curves and
spread (a reference never trips it), the evidence it records, and the fitness's leak rule using
the same tolerance. The sandboxed re-check runs in tests/test_sandbox.py."""

from __future__ import annotations

import math

from agents.fitness import LEAK_FRACTION, compute_fitness, leak_fraction
from training.leak_monitor import (
    DEFAULT_LOSS_TOLERANCE,
    MIN_LOSS_MARGIN,
    MIN_PROBE_MARGIN,
    curve_gap,
    leak_reference,
    loss_tolerance,
    probe_flags,
    tolerance_of,
)
from training.trainer import RunMonitor, TrainConfig

STEPS = 300


def _curve(final: float, start: float = 5.5, steps: int = STEPS) -> list[list[float]]:
    """A smooth training curve from ``start`` to ``final`` (exponential approach)."""
    return [[s, final + (start - final) * math.exp(-s / 60.0)] for s in range(steps)]


def _baseline(final: float, val_loss: float, std: float, probes: dict | None = None,
              probe_std: float = 0.0) -> dict:
    spread = {"val_loss": {"n": 3, "mean": val_loss, "std": std}}
    for k, v in (probes or {}).items():
        spread[f"probes.{k}"] = {"n": 3, "mean": v, "std": probe_std}
    return {"status": "ok", "loss_curve": _curve(final), "val_loss": val_loss, "probes": dict(probes or {}),
            "spread": spread, "n_seeds": 3}


def _explore_baselines() -> dict:
    """DeltaNet the seed; Gated DeltaNet ~9% below it (as measured at explore); softmax between."""
    return {
        "deltanet": _baseline(2.20, 2.22, 0.01),
        "gated_deltanet": _baseline(2.00, 2.02, 0.012),
        "softmax_attention": _baseline(2.10, 2.12, 0.01, {"mqar": 0.87, "noisy_recall": 0.60}, 0.014),
        "linear_attention": _baseline(2.45, 2.47, 0.02),
    }


def _monitor(tol: float, seed_curve: list) -> RunMonitor:
    return RunMonitor(TrainConfig(steps=STEPS, leak_tolerance=tol), seed_curve)


def _fires(mon: RunMonitor, curve: list) -> str | None:
    for s, v in curve:
        why = mon.update(int(s), v)
        if why:
            return why
    return None


def test_the_calibrated_loss_rule_never_flags_a_reference():
    base = _explore_baselines()
    ref = leak_reference(base)
    loss = ref["loss"]
    gap, step = curve_gap(base["deltanet"]["loss_curve"], base["gated_deltanet"]["loss_curve"])
    assert 0.08 < gap < 0.10 and step is not None  # Gated DeltaNet ~9% below the seed
    assert loss["calibrated"] and math.isclose(loss["max_gap"], gap, rel_tol=1e-4)
    # margin: 3 x the largest relative seed spread (0.02 / 2.47), at least MIN_LOSS_MARGIN
    assert math.isclose(loss["margin"], max(MIN_LOSS_MARGIN, 3 * 0.02 / 2.47), rel_tol=1e-3)
    assert loss["tolerance"] > gap + MIN_LOSS_MARGIN - 1e-9 and loss["tolerance"] > DEFAULT_LOSS_TOLERANCE
    assert set(loss["by_reference"]) == {"gated_deltanet", "softmax_attention", "linear_attention"}
    seed = base["deltanet"]["loss_curve"]
    for name in loss["by_reference"]:
        assert _fires(_monitor(loss["tolerance"], seed), base[name]["loss_curve"]) is None, name
    # a reference 11% below the seed: the uncalibrated 10% rule would call it a leak, the rule
    # calibrated on it does not
    strong = {**base, "gated_deltanet": _baseline(1.955, 1.97, 0.012)}
    tol = leak_reference(strong)["loss"]["tolerance"]
    assert _fires(_monitor(DEFAULT_LOSS_TOLERANCE, seed), strong["gated_deltanet"]["loss_curve"])
    assert _fires(_monitor(tol, seed), strong["gated_deltanet"]["loss_curve"]) is None
    # a run far below every reference (a leak) still stops, with the evidence recorded
    mon = _monitor(loss["tolerance"], seed)
    why = _fires(mon, _curve(1.40))
    assert why and why.startswith("suspected leak of future tokens")
    ev = mon.evidence
    assert ev["tolerance"] == loss["tolerance"] and ev["below_by"] > loss["tolerance"]
    assert ev["smoothed_loss"] < (1 - loss["tolerance"]) * ev["baseline_loss"]


def test_the_loss_rule_without_references_stays_at_the_default():
    assert loss_tolerance(None, {})["tolerance"] == DEFAULT_LOSS_TOLERANCE
    only_seed = {"deltanet": _baseline(2.2, 2.22, 0.01)}
    lt = leak_reference(only_seed)["loss"]
    assert lt["tolerance"] == DEFAULT_LOSS_TOLERANCE and not lt["calibrated"]
    # references all above the seed: calibration never makes the rule stricter than today's
    worse = {**only_seed, "linear_attention": _baseline(2.45, 2.47, 0.001)}
    assert leak_reference(worse)["loss"]["tolerance"] == DEFAULT_LOSS_TOLERANCE
    assert tolerance_of(None) == DEFAULT_LOSS_TOLERANCE
    assert tolerance_of({"leak_reference": {"loss": {"tolerance": 0.14}}}) == 0.14
    assert tolerance_of({"leak_reference": {"loss": {"tolerance": 0.01}}}) == DEFAULT_LOSS_TOLERANCE


def test_the_probe_rule_compares_with_softmax_attention_and_its_spread():
    ref = leak_reference(_explore_baselines())["probe"]
    assert ref["name"] == "softmax_attention" and ref["probes"]["mqar"] == {"mean": 0.87, "std": 0.014, "n": 3}
    # within softmax attention's spread: not flagged; above it: flagged, largest excess first
    assert probe_flags({"mqar": 0.88, "noisy_recall": 0.55}, ref) == []
    flags = probe_flags({"mqar": 0.99, "noisy_recall": 0.70, "memorization": 1.0}, ref)
    assert [f["probe"] for f in flags] == ["mqar", "noisy_recall"]  # no reference for memorization
    assert flags[0]["margin"] == 0.014 and math.isclose(flags[0]["excess"], 0.12, abs_tol=1e-9)
    assert flags[0]["reference"] == "softmax_attention" and flags[0]["accuracy"] == 0.99
    # a zero spread (one seed, or equal seeds) falls back to MIN_PROBE_MARGIN
    one = leak_reference({"softmax_attention": {"probes": {"mqar": 0.5}}})["probe"]
    assert probe_flags({"mqar": 0.5 + MIN_PROBE_MARGIN / 2}, one) == []
    assert [f["margin"] for f in probe_flags({"mqar": 0.6}, one)] == [MIN_PROBE_MARGIN]
    # without a softmax baseline there is nothing to compare with
    assert leak_reference({"deltanet": _baseline(2.2, 2.2, 0.0)})["probe"] is None
    assert probe_flags({"mqar": 1.0}, None) == []


def test_the_fitness_leak_rule_uses_the_recorded_tolerance():
    seed = {"val_loss": 2.20, "probe_mean": 0.5}
    better = {"val_loss": 2.20 * 0.88, "probe_mean": 0.5}  # 12% below the seed
    _, plain = compute_fitness(better, seed, None)
    assert plain["leak_suspected"] and plain["leak_fraction"] == LEAK_FRACTION
    calibrated = {**better, "leak_tolerance": 0.14}
    _, comps = compute_fitness(calibrated, seed, None)
    assert not comps["leak_suspected"] and comps["measured"]["s_loss"] and comps["leak_fraction"] == 0.14
    _, far = compute_fitness({**calibrated, "val_loss": 2.20 * 0.80}, seed, None)
    assert far["leak_suspected"]
    assert leak_fraction({"leak_tolerance": 0.05}) == LEAK_FRACTION and leak_fraction(None) == LEAK_FRACTION
