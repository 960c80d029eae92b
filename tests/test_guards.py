"""The evaluation guards (training.guards): CPU-second efficiency cap (``too_slow``), wall-time
hang guard (``hung``), partial metrics, and an evaluation that holds still on a busy machine.
Clocks are patched; nothing asserts on elapsed time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine_helpers import GOOD_SOURCE, tiny_scale
from training import guards as G
from training.evaluate import evaluate_class, is_partial
from training.guards import Guards, GuardSettings
from training.loader import load_mixer_class

pytestmark = pytest.mark.usefixtures("one_thread")

SEED_OK = {"status": "ok", "scale": "probe", "cpu_seconds": 50.0, "wall_seconds": 60.0, "partial": False}


def test_check_is_a_pure_function_of_cpu_and_wall_seconds():
    g = Guards.relative_to(SEED_OK, GuardSettings(cpu_factor=8, wall_factor=20, min_wall_s=600))
    assert g.cpu_limit_s == 400.0 and g.wall_limit_s == 1200.0 and g.seed_cpu_s == 50.0
    assert g.check(399.0, 1000.0) is None
    assert g.check(401.0, 1000.0) == "too_slow"
    assert g.check(10.0, 1201.0) == "hung"
    assert g.check(500.0, 1300.0) == "hung"  # the hang guard wins
    assert "8x the seed's 50 CPU s" in g.reason("too_slow", 401.0, 500.0)
    assert g.relative_throughput(0.5, 100.0) == 0.25  # half the work in twice the seed's whole CPU time
    assert Guards.from_dict(g.to_dict()) == g


def test_no_efficiency_cap_without_a_complete_seed_measurement():
    for seed in (None, {**SEED_OK, "status": "too_slow"}, {**SEED_OK, "partial": True},
                 {**SEED_OK, "cpu_seconds": None}):
        g = Guards.relative_to(seed, expected_s=90.0)
        assert g.cpu_limit_s is None and g.wall_limit_s == max(600.0, 20 * 90.0), seed
    # a seed measured at another scale is no yardstick here
    assert Guards.relative_to(SEED_OK, scale_name="explore").cpu_limit_s is None
    # minimum CPU cap: a seed measured in a fraction of a second does not make jitter a verdict
    tiny = {**SEED_OK, "cpu_seconds": 0.2}
    assert Guards.relative_to(tiny).cpu_limit_s == GuardSettings().min_cpu_s
    with pytest.raises(ValueError):
        GuardSettings(cpu_factor=-1)


class FakeClock:
    """A clock that advances ``tick`` seconds every time it is read."""

    def __init__(self, tick: float) -> None:
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def _cls():
    return load_mixer_class(GOOD_SOURCE)


def test_cpu_guard_ends_the_run_too_slow_with_partial_metrics(monkeypatch):
    """Every CPU-clock read advances 1 s; the cap is 30 CPU s: the run ends ``too_slow`` part
    way, keeps the probes it finished, reports no suite mean, and its throughput vs the seed."""
    monkeypatch.setattr(G, "cpu_clock", FakeClock(1.0))
    scale = tiny_scale("probe", probe_steps=10)
    guards = Guards(cpu_limit_s=30.0, wall_limit_s=None, seed_cpu_s=10.0, seed_wall_s=10.0)
    m = evaluate_class(_cls(), scale, seed=0, guards=guards)
    assert m["status"] == "too_slow" and "too slow" in m["stop_reason"], m["stop_reason"]
    assert m["partial"] is True and is_partial(m)
    assert m["probe_mean"] is None  # never a mean over the probes it happened to finish
    done = [k for k, v in m["probes"].items() if v is not None]
    assert 0 < len(done) < len(scale.probes) and m["probes_done"] == len(done)
    assert m["probe_mean_partial"] == pytest.approx(sum(m["probes"][k] for k in done) / len(done))
    assert 0 < m["steps_done"] < m["steps_planned"]
    assert m["throughput_vs_seed"] is not None and 0 < m["throughput_vs_seed"] < 1
    assert m["cpu_seconds"] > 30.0 and m["guards"]["cpu_limit_s"] == 30.0


def test_hang_guard_ends_the_run_hung(monkeypatch):
    monkeypatch.setattr(G, "wall_clock", FakeClock(20.0))
    scale = tiny_scale("explore", lm_steps=50, probe_steps=3)
    m = evaluate_class(_cls(), scale, seed=0, guards=Guards(cpu_limit_s=None, wall_limit_s=600.0))
    assert m["status"] == "hung" and "hang guard" in m["stop_reason"] and "language model" in m["stop_reason"]
    assert m["partial"] is True and m["val_loss"] is None
    assert m["steps_done"] < m["steps_planned"] and m["load_avg_end"] is not None


def test_complete_run_records_work_and_clocks():
    scale = tiny_scale("probe", probe_steps=3)
    m = evaluate_class(_cls(), scale, seed=0)
    assert m["status"] == "ok" and m["partial"] is False
    assert m["steps_done"] == m["steps_planned"] == 3 * len(scale.probes)
    assert m["tokens_done"] > 0 and m["cpu_seconds"] > 0 and m["wall_seconds"] > 0
    assert m["load_avg_start"] is not None and m["load_avg_end"] is not None
    assert m["probes_done"] == m["probes_total"] == len(scale.probes)


def test_probe_evaluation_holds_still_beside_two_busy_loops():
    """Two busy-loop processes occupy both cores (each ends by itself after 120 s and is killed
    at the end of the test); an evaluation capped at 8x the seed's CPU seconds (measured first)
    still ends ``ok`` with every probe measured: CPU time, unlike wall time, is not stolen."""
    scale = tiny_scale("probe", probe_steps=25)
    seed = evaluate_class(_cls(), scale, seed=0)
    assert seed["status"] == "ok"
    guards = Guards.relative_to(seed, GuardSettings(min_cpu_s=0.0), expected_s=None, scale_name=scale.name)
    assert guards.cpu_limit_s == pytest.approx(8 * seed["cpu_seconds"])
    hog = "import time\nend = time.time() + 120\nwhile time.time() < end:\n    pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(2)]
    try:
        m = evaluate_class(_cls(), scale, seed=0, guards=guards)
    finally:
        for p in hogs:
            p.kill()
            p.wait()
    assert m["status"] == "ok", m["stop_reason"]
    assert all(v is not None for v in m["probes"].values()) and m["probes_done"] == len(scale.probes)
    assert m["probe_mean"] is not None and m["partial"] is False


def test_sandboxed_evaluation_carries_the_guards_and_comes_back_too_slow(tmp_path):
    """Through the real sandbox: the executor derives the cap from the seed's metrics and the
    guard settings, the child applies it, the partial metrics come back as too_slow."""
    from pathlib import Path

    from agents.engineer import SandboxExecutor
    from training.mixers import REFERENCE_MIXERS

    scale = tiny_scale("probe", probe_steps=400)
    ex = SandboxExecutor(scale, guards=GuardSettings(cpu_factor=1.0, min_cpu_s=0.0))
    seed = {"status": "ok", "scale": scale.name, "cpu_seconds": 0.5, "wall_seconds": 1.0, "partial": False}
    res = ex.evaluate(Path(REFERENCE_MIXERS["deltanet"]), tmp_path / "run", 0, seed)
    assert not res.ok and res.metrics is not None, res.error
    m = res.metrics
    assert m["status"] == "too_slow" and m["partial"] is True and m["guards"]["cpu_limit_s"] == 0.5
    assert m["steps_done"] < m["steps_planned"] and m["probe_mean"] is None
    assert "too slow" in res.error
