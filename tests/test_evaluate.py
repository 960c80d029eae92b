"""Tests of training.evaluate: the metrics dict, errors, and the monitor through evaluation."""

from __future__ import annotations

import pytest

import json
import math
from dataclasses import replace

from engine_helpers import (
    GOOD_SOURCE, NAN_SOURCE, NO_MIXER_SOURCE, PEEK_SOURCE, SYNTAX_ERROR_SOURCE, WRONG_SHAPE_SOURCE, tiny_scale,
)
from training.evaluate import aggregate_runs, evaluate_class, evaluate_file, rank_key
from training.loader import load_mixer_class
from training.mixers import REFERENCE_MIXERS

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = {"scale", "seed", "params", "mixer_params", "val_loss", "val_bpb", "train_loss", "tokens_per_s",
        "train_seconds", "probes", "probe_mean", "loss_curve", "status", "stop_reason", "error"}


def _write(tmp_path, source, name="mixer.py"):
    path = tmp_path / name
    path.write_text(source)
    return path


def test_explore_metrics_contract(tmp_path):
    lines, fracs = [], []
    m = evaluate_file(_write(tmp_path, GOOD_SOURCE), scale=tiny_scale("explore"), seed=1, on_log=lines.append,
                      progress=lambda f, d: fracs.append(f))
    assert KEYS <= set(m) and m["status"] == "ok", m
    json.dumps(m)
    assert m["scale"] == "explore" and m["seed"] == 1
    assert set(m["probes"]) == {"mqar", "noisy_recall", "fuzzy_recall", "selective_copy", "compression", "memorization"}
    assert all(0.0 <= a <= 1.0 for a in m["probes"].values())
    assert math.isclose(m["probe_mean"], sum(m["probes"].values()) / 6)
    assert math.isclose(m["val_bpb"], m["val_loss"] / math.log(2))
    assert 4 < m["val_bpb"] < 9  # an untrained byte model is near 8 bits
    assert m["params"] > m["mixer_params"] > 0 and m["tokens_per_s"] > 0
    assert [s for s, _ in m["loss_curve"]] == [0, 1, 2, 3]
    assert any(line.startswith("[lm] step") for line in lines)
    assert fracs == sorted(fracs) and fracs[-1] == 1.0


def test_probe_scale_has_no_lm_and_is_deterministic():
    cls = load_mixer_class(GOOD_SOURCE)
    a = evaluate_class(cls, tiny_scale("probe"), seed=0)
    b = evaluate_class(cls, tiny_scale("probe"), seed=0)
    assert a["status"] == "ok" and a["val_loss"] is None and a["val_bpb"] is None and a["loss_curve"] == []
    assert a["probes"] == b["probes"]


def test_bad_files_give_error_status(tmp_path):
    for source, needle in ((NO_MIXER_SOURCE, "Mixer"), (SYNTAX_ERROR_SOURCE, "yntax"),
                           (WRONG_SHAPE_SOURCE, "shape")):
        m = evaluate_file(_write(tmp_path, source), scale=tiny_scale("probe"))
        assert m["status"] == "error" and needle in m["error"], m["error"]
    m = evaluate_file(tmp_path / "missing.py", scale=tiny_scale("probe"))
    assert m["status"] == "error" and "does not exist" in m["error"]


def test_nan_during_training_is_stopped():
    m = evaluate_class(load_mixer_class(NAN_SOURCE), tiny_scale("probe", probe_steps=5))
    assert m["status"] == "stopped" and "non-finite" in m["stop_reason"]


def test_leak_against_seed_baseline():
    scale = replace(tiny_scale("explore", lm_steps=30), probes=(), lr=3e-2)
    base = evaluate_class(load_mixer_class(GOOD_SOURCE), scale, seed=0)
    assert base["status"] == "ok"
    honest = evaluate_class(load_mixer_class(GOOD_SOURCE), scale, seed=0, baseline=base)
    assert honest["status"] == "ok", honest["stop_reason"]
    leak = evaluate_class(load_mixer_class(PEEK_SOURCE), scale, seed=0, baseline=base)
    assert leak["status"] == "stopped" and "leak" in leak["stop_reason"]
    # the evidence is recorded; the tolerance is the default without references, the calibrated
    # one when the baseline carries them (the loop's leak_reference), and both are on the record
    rule = leak["leak_monitor"]["loss_rule"]
    assert rule["fired"] and rule["tolerance"] == 0.10 and leak["leak_tolerance"] == 0.10
    ev = rule["evidence"]
    assert ev["below_by"] > 0.10 and ev["smoothed_loss"] < 0.9 * ev["baseline_loss"] and ev["step"] >= 3
    assert not honest["leak_monitor"]["loss_rule"]["fired"] and honest["leak_monitor"]["loss_rule"]["against"] == "seed"
    wide = {**base, "leak_reference": {"loss": {"tolerance": 0.99}}}
    calibrated = evaluate_class(load_mixer_class(PEEK_SOURCE), scale, seed=0, baseline=wide)
    assert calibrated["leak_tolerance"] == 0.99 and not calibrated["leak_monitor"]["loss_rule"]["fired"]
    assert calibrated["leak_monitor"]["loss_rule"]["calibration"] == {"tolerance": 0.99}


def test_reference_mixer_runs_and_aggregation():
    scale = replace(tiny_scale("explore"), probes=tiny_scale("explore").probes[:2])
    runs = [evaluate_file(REFERENCE_MIXERS["deltanet"], scale=scale, seed=s) for s in (0, 1)]
    assert all(r["status"] == "ok" for r in runs)
    agg = aggregate_runs("deltanet", runs)
    assert agg["seeds"] == [0, 1] and agg["val_bpb_std"] >= 0
    worse = dict(agg, name="x", val_bpb=agg["val_bpb"] + 1)
    failed = dict(agg, name="y", status="error", val_bpb=0.1)
    assert [r["name"] for r in sorted([failed, worse, agg], key=rank_key)] == ["deltanet", "x", "y"]


def test_scales_contract():
    import dataclasses

    import pytest

    from training.mixers import reference_mixer_class
    from training.scales import SCALES, get_scale, scaled_down

    assert set(SCALES) == {"demo", "probe", "explore", "verify-mini", "verify"}
    assert not SCALES["demo"].has_lm and len(SCALES["demo"].probes) == 2
    assert not SCALES["probe"].has_lm and SCALES["explore"].has_lm and SCALES["verify"].lm_eval_tasks
    assert SCALES["explore"].lm_tokens >= 1_000_000
    with pytest.raises(ValueError, match="unknown scale"):
        get_scale("nope")
    for s in SCALES.values():
        assert get_scale(json.loads(json.dumps(dataclasses.asdict(s), default=str))) == s
        full = {"mqar", "noisy_recall", "fuzzy_recall", "selective_copy", "compression", "memorization"}
        expected = {"demo": {"noisy_recall", "fuzzy_recall"}, "verify-mini": {"noisy_recall"}}.get(s.name, full)
        assert {p.label for p in s.probes} == expected
    small = scaled_down("explore", 0.1)
    assert small.lm_steps == SCALES["explore"].lm_steps // 10 and small.name == "explore"
    # every reference mixer fits the budget at the scale's width
    s = SCALES["explore"]
    for name in REFERENCE_MIXERS:
        mixer = reference_mixer_class(name)(s.d_model, s.n_heads)
        assert sum(p.numel() for p in mixer.parameters()) <= s.mixer_param_budget


def test_torch_threads_context(monkeypatch):
    import torch

    from training.trainer import torch_threads

    torch.set_num_threads(2)  # the autouse fixture restores the original afterwards
    monkeypatch.setenv("ASIARCH_TORCH_THREADS", "1")
    with torch_threads(None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with torch_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 2
