"""Early stopping at the LM run's half-way checkpoint (training.early_stop): the rule on synthetic
curves, the evaluator's checkpoint, the harness's verdict in the sandbox, and the loop's
``stopped_early`` rung."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from agents.engineer import StepResult
from agents.loop import Loop
from agents.seeds import combine, per_seed
from training.early_stop import (STOPPED_EARLY, Reference, checkpoint_step, curve_value, decide,
                                 planned_saving, reference)
from tests.engine_helpers import GOOD_SOURCE, tiny_scale
from tests.loop_helpers import FakeExecutor, make_lab


def _curve(seed: int, steps: int = 300, shift: float = 0.0, noise: float = 0.05) -> list[list[float]]:
    """A synthetic training-loss curve: exponential decay to 2.0 nats, per-step batch noise, and
    a per-seed offset (the seed-to-seed spread)."""
    rng = random.Random(seed)
    offset = rng.gauss(0.0, 0.02)
    return [[s, 2.0 + 3.5 * math.exp(-s / 60.0) + offset + shift + rng.gauss(0.0, noise)] for s in range(steps)]


def _seed_metrics(values: list[float] | None = None, curves: list[list[list[float]]] | None = None,
                  step: int = 150, batches: int = 8, scale: str = "explore") -> dict:
    runs = []
    for i in range(len(values or curves or [])):
        run = {"seed": i, "status": "ok", "scale": scale, "val_loss": 1.5, "probes": {"mqar": 0.5},
               "probe_mean": 0.5, "loss_curve": (curves or [[]] * 3)[i] if curves else []}
        if values:
            run["checkpoint"] = {"step": step, "loss": values[i], "batches": batches, "split": "train",
                                 "computed_by": "harness"}
        runs.append(run)
    return combine(runs)


# ---------------------------------------------------------------- the rule


def test_checkpoint_step_is_half_way():
    assert checkpoint_step(300) == 150
    assert checkpoint_step(3) == 1
    assert checkpoint_step(1) is None and checkpoint_step(0) is None
    assert planned_saving(300) == 150 and planned_saving(0) == 0


def test_curve_value_is_the_mean_of_a_window_centred_on_the_step():
    curve = [[s, float(s)] for s in range(20)]
    assert curve_value(curve, 10, 4) == pytest.approx((8 + 9 + 10 + 11) / 4)
    assert curve_value(curve, 10, 1) == 10.0
    assert curve_value(curve, 30, 4) is None  # not covered
    assert curve_value([], 10, 4) is None


def test_reference_prefers_the_recorded_checkpoints():
    m = _seed_metrics(values=[2.50, 2.54, 2.52], curves=[_curve(0), _curve(1), _curve(2)])
    ref = reference(m, 150, 8, "explore")
    assert ref.source == "checkpoint" and ref.n == 3
    assert ref.mean == pytest.approx(2.52) and ref.std == pytest.approx(0.02)
    # another step or another number of batches is another procedure: the curves answer
    ref2 = reference(m, 100, 8, "explore")
    assert ref2.source == "curve" and ref2.n == 3
    assert reference(m, 150, 8, "probe") is None  # another scale


def test_reference_falls_back_to_per_seed_curves():
    curves = [_curve(s) for s in range(3)]
    ref = reference(_seed_metrics(curves=curves), 150, 8, "explore")
    assert ref.source == "curve" and ref.n == 3
    expected = [curve_value(c, 150, 8) for c in curves]
    assert ref.mean == pytest.approx(sum(expected) / 3)
    # a measurement made before per-seed curves were kept has one curve: no spread
    one = {"scale": "explore", "status": "ok", "loss_curve": curves[0],
           "seeds": [{"seed": s, "status": "ok"} for s in range(3)]}
    assert reference(one, 150, 8, "explore") is None


def test_decide_stops_only_beyond_the_seed_spread():
    ref = Reference({0: 2.50, 1: 2.54, 2: 2.52}, 150, "checkpoint")  # mean 2.52, std 0.02
    assert decide(2.60, ref).stop  # 4 spreads behind
    d = decide(2.53, ref)
    assert d.outcome == "continue" and not d.stop  # half a spread
    assert decide(2.45, ref).outcome == "continue"  # ahead of the seed
    assert decide(2.539, ref).outcome == "continue" and decide(2.541, ref).stop  # the threshold is mean + 1 std
    assert decide(2.55, ref, spreads=2.0).outcome == "continue"
    stop = decide(2.60, ref, step=150, total_steps=300)
    assert stop.threshold == pytest.approx(2.54) and "150/300" in stop.text and stop.text.startswith("stopped early")
    assert stop.to_dict()["reference_values"] == {"0": 2.5, "1": 2.54, "2": 2.52}


def test_decide_without_a_spread_never_stops():
    assert decide(9.0, None).outcome == "no_reference"
    assert decide(9.0, Reference({0: 2.5}, 150, "checkpoint")).outcome == "no_reference"
    assert decide(None, Reference({0: 2.5, 1: 2.6}, 150, "checkpoint")).outcome == "no_reference"


def test_synthetic_curves_stop_the_clearly_worse_and_keep_the_rest():
    """Seed curves with a seed-to-seed offset; candidates whose curves are the same family
    shifted: a shift of many spreads is stopped, no shift or a better one never is."""
    seeds = [_curve(s, noise=0.01) for s in range(3)]
    ref = reference(_seed_metrics(curves=seeds), 150, 8, "explore")
    assert ref.std is not None and 0.0 < ref.std < 0.1
    for shift, stopped in ((0.3, True), (-0.1, False), (0.0, False)):
        cand = curve_value(_curve(10, shift=shift, noise=0.01), 150, 8)
        assert decide(cand, ref).stop is stopped, shift


# ---------------------------------------------------------------- the evaluator and the harness


def _file(tmp_path: Path) -> Path:
    p = tmp_path / "mixer.py"
    p.write_text(GOOD_SOURCE)
    return p


def test_evaluator_records_the_checkpoint_and_stops_when_told(tmp_path):
    from training.evaluate import evaluate_file

    sc = tiny_scale("explore", lm_steps=8)
    full = evaluate_file(_file(tmp_path), sc, seed=0)
    asked: list[int] = []
    same = evaluate_file(_file(tmp_path), sc, seed=0, checkpoint=lambda step, model: asked.append(step))
    assert asked == [4] and full["checkpoint"]["step"] == 4 and full["checkpoint"]["computed_by"] == "evaluator"
    assert same["status"] == "ok" and same["val_loss"] == full["val_loss"]  # the checkpoint changes nothing
    stopped = evaluate_file(_file(tmp_path), sc, seed=0, checkpoint=lambda step, model: "behind the seed")
    assert stopped["status"] == STOPPED_EARLY and stopped["stop_reason"] == "behind the seed"
    assert stopped["partial"] and stopped["val_loss"] is None and stopped["val_bpb"] is None
    assert stopped["probe_mean"] == full["probe_mean"]  # the probes ran before the LM
    assert len(stopped["loss_curve"]) == 4 and stopped["steps_done"] == full["steps_done"] - 4
    assert stopped["checkpoint"]["loss"] == full["checkpoint"]["loss"]


def test_harness_decides_in_the_sandbox(tmp_path):
    """A real sandboxed evaluation at a tiny scale: the harness measures the checkpoint itself
    and stops the run when the seed's per-seed values say it is behind."""
    from agents.engineer import SandboxExecutor

    sc = tiny_scale("explore", lm_steps=8)
    ex = SandboxExecutor(sc)
    path = _file(tmp_path)
    free = ex.evaluate(path, tmp_path / "free", 0, None, trusted=True, early_stop=1.0)
    assert free.ok and free.metrics["early_stop"] is None  # no seed measurement: no verdict asked
    cp = free.metrics["checkpoint"]
    assert cp["computed_by"] == "harness" and cp["step"] == 4 and cp["loss"] == pytest.approx(cp["worker_loss"], abs=1e-5)

    def seed_at(*values: float) -> dict:
        return combine([{"seed": i, "status": "ok", "scale": sc.name, "probes": {}, "probe_mean": None,
                         "checkpoint": {"step": 4, "loss": v, "batches": sc.val_batches}} for i, v in enumerate(values)])

    ahead = seed_at(cp["loss"] - 1.0, cp["loss"] - 1.02, cp["loss"] - 0.98)
    stop = ex.evaluate(path, tmp_path / "stop", 0, ahead, trusted=True, early_stop=1.0)
    assert not stop.ok and stop.metrics["status"] == STOPPED_EARLY and stop.metrics["partial"]
    assert stop.metrics["early_stop"]["outcome"] == "stop" and stop.metrics["val_loss"] is None
    assert stop.error.startswith("stopped early")
    assert stop.metrics["steps_done"] == free.metrics["steps_done"] - 4
    behind = seed_at(cp["loss"] + 1.0, cp["loss"] + 1.02, cp["loss"] + 0.98)
    go = ex.evaluate(path, tmp_path / "go", 0, behind, trusted=True, early_stop=1.0)
    assert go.ok and go.metrics["early_stop"]["outcome"] == "continue"
    assert go.metrics["val_loss"] == free.metrics["val_loss"]
    # without early_stop the same seed measurement stops nothing
    off = ex.evaluate(path, tmp_path / "off", 0, ahead, trusted=True)
    assert off.ok and off.metrics["early_stop"] is None


def test_harness_overrides_what_the_worker_says():
    from training.sandbox_child import HalfwayCheckpoint

    sc = tiny_scale("explore", lm_steps=8)
    payload = {"scale": __import__("dataclasses").asdict(sc), "seed": 0}
    hc = HalfwayCheckpoint(payload)
    assert hc.step == 4
    # a complete run that never stopped at the checkpoint
    m = {"status": "ok", "val_loss": 1.0, "checkpoint": {"step": 4, "loss": 0.1}}
    assert "skipped" in hc.apply(m) and m["status"] == "error" and m["checkpoint"] is None
    # a worker that stopped on its own
    m = {"status": STOPPED_EARLY}
    assert "without the harness" in hc.apply(m) and m["status"] == "error"
    # the harness said stop: whatever the worker reports, the run is stopped early
    hc.measured = {"step": 4, "loss": 5.0, "batches": sc.val_batches, "split": "train", "computed_by": "harness"}
    hc.decision = decide(5.0, Reference({0: 1.0, 1: 1.1}, 4, "checkpoint"))
    m = {"status": "ok", "val_loss": 0.5, "val_bpb": 0.7, "checkpoint": {"step": 4, "loss": 0.1}}
    assert hc.apply(m).startswith("stopped early")
    assert m["status"] == STOPPED_EARLY and m["val_loss"] is None and m["partial"]
    assert m["checkpoint"]["loss"] == 5.0 and m["checkpoint"]["worker_loss"] == 0.1


# ---------------------------------------------------------------- the loop


class EarlyStopExecutor(FakeExecutor):
    """FakeExecutor that stops, when asked to, every candidate whose code hash is in the lower
    half; it records the ``early_stop`` of every evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[int, float | None]] = []

    def evaluate(self, path, run_dir, seed, baseline, on_line=None, trusted=False, early_stop=None):
        res = super().evaluate(path, run_dir, seed, baseline, on_line)
        self.asked.append((seed, early_stop))
        import hashlib

        h = int(hashlib.sha1(Path(path).read_text().encode()).hexdigest()[:6], 16) / 0xFFFFFF
        if early_stop is not None and baseline and h < 0.5:
            m = dict(res.metrics, status=STOPPED_EARLY, partial=True, stop_reason="stopped early: behind",
                     early_stop={"outcome": "stop"})
            return StepResult(False, [], m, error="stopped early: behind the seed")
        return res


def test_loop_commits_stopped_early_as_a_rung(tmp_path):
    lab = make_lab(tmp_path / "lab", top_k_seeds=5)
    ex = EarlyStopExecutor()
    loop = Loop(lab, llm="builtin", executor=ex, experiments=8, backoff_s=0, baselines=("deltanet",))
    loop.run()
    assert sorted(ex.asked[:3]) == [(0, None), (1, None), (2, None)]  # the seed's measurement never stops
    recs = {r.id: r for r in lab.store.all()}
    stopped = [r for r in recs.values() if r.status == STOPPED_EARLY]
    assert stopped, "some candidate should have been stopped early"
    for r in stopped:
        assert r.fitness is None and not (r.promotion or {}).get("promoted")
        assert len(per_seed(r.metrics)) == 1 and r.extra["failure"].startswith("stopped early")
        assert lab.store.best().id != r.id
    ids = {r.id for r in stopped}
    assert all(r.parent not in ids for r in recs.values())  # never a parent
    # only a candidate's first seed may stop early; its extra seeds never
    first = [es for sd, es in ex.asked[3:] if sd == 0]
    assert first and all(es == 1.0 for es in first)
    assert all(es is None for sd, es in ex.asked[3:] if sd != 0)
    docs = {d["id"]: d for d in lab.index.all()}
    assert all(docs[i]["status"] == STOPPED_EARLY for i in ids)


def test_early_stop_can_be_switched_off(tmp_path):
    lab = make_lab(tmp_path / "lab", early_stop=False)
    ex = EarlyStopExecutor()
    Loop(lab, llm="builtin", executor=ex, experiments=3, backoff_s=0, baselines=("deltanet",)).run()
    assert all(es is None for _, es in ex.asked)
    assert not [r for r in lab.store.all() if r.status == STOPPED_EARLY]


def test_tree_label_says_stopped_early():
    from asiarch_tui.widgets import node_label

    text = node_label({"id": "0007", "name": "x", "status": STOPPED_EARLY, "fitness": None}, None).plain
    assert "stopped early at half-way" in text and "—" in text
