"""The yardstick: no score without a complete seed measurement, the seed measured first and the
comparisons between experiments, fitness as derived data re-scored when the yardstick changes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agents.engineer import StepResult
from agents.events import BaselineProgress, ExperimentFinished, Warning
from agents.loop import Loop
from agents.yardstick import lab_yardstick, make_yardstick, rescore_lab, score, yardstick_version
from archive.lab import Lab
from archive.record import ExperimentRecord
from loop_helpers import FakeExecutor, make_lab
from training.evaluate import EVAL_VERSION

SEED = {"scale": "probe", "seed": 0, "eval_version": EVAL_VERSION, "status": "ok", "partial": False,
        "probes": {"mqar": 0.3, "noisy_recall": 0.3},
        "probe_mean": 0.3, "val_loss": None, "cpu_seconds": 40.0, "wall_seconds": 50.0}
HIGH_JUDGE = {"performance": 9, "innovation": 9, "complexity": 10}
LOW_JUDGE = {"performance": 2, "innovation": 2, "complexity": 2}


def _metrics(pm: float, **kw) -> dict:
    return {"scale": "probe", "seed": 0, "eval_version": EVAL_VERSION, "status": "ok", "partial": False,
            "probes": {"mqar": pm, "noisy_recall": pm},
            "probe_mean": pm, "val_loss": None, **kw}


class SeedFails(FakeExecutor):
    """The seed's evaluation ends too_slow (partial metrics); nothing else is ever evaluated."""

    def evaluate(self, path, run_dir, seed, baseline, on_line=None):
        self.evaluated.append(str(run_dir))
        m = {"scale": "probe", "status": "too_slow", "partial": True, "probes": {"mqar": 0.5, "noisy_recall": None},
             "probe_mean": None, "probe_mean_partial": 0.5, "stop_reason": "too slow: 900 CPU s"}
        return StepResult(False, [], m, error=m["stop_reason"])


class Recording(FakeExecutor):
    def __init__(self) -> None:
        super().__init__()
        self.dirs: list[str] = []

    def evaluate(self, path, run_dir, seed, baseline, on_line=None):
        rd = Path(run_dir)
        name = rd.parent.name if rd.name.startswith("seed-") else rd.name  # lab/runs/baselines/<scale>/<name>/seed-N
        self.dirs.append(name if "baselines" in rd.parts else "experiment")
        return super().evaluate(path, run_dir, seed, baseline, on_line)


def test_score_needs_a_complete_yardstick_and_complete_metrics():
    ys = make_yardstick(SEED, "probe")
    assert ys is not None and ys.version == yardstick_version(dict(SEED), "probe")
    f, comps = score(_metrics(0.5), HIGH_JUDGE, ys)
    assert f is not None and comps["yardstick"] == ys.version and comps["judge"] == HIGH_JUDGE
    # no yardstick: nothing scored, and the reason is kept
    f, comps = score(_metrics(0.5), HIGH_JUDGE, None, missing="the seed has not been measured")
    assert f is None and comps["unscored"] == "the seed has not been measured"
    # a partial seed is no yardstick
    assert make_yardstick({**SEED, "status": "too_slow", "partial": True}, "probe") is None
    assert make_yardstick({**SEED, "probes": {"mqar": 0.3, "noisy_recall": None}}, "probe") is None
    # failed / too_slow / rejected / partial experiments have no fitness (not 0.5-ish)
    for status in ("failed", "too_slow", "rejected"):
        assert score(_metrics(0.5), HIGH_JUDGE, ys, status)[0] is None
    assert score({**_metrics(0.5), "partial": True}, HIGH_JUDGE, ys)[0] is None
    assert score({**_metrics(0.5), "status": "hung"}, HIGH_JUDGE, ys)[0] is None
    # another scale's metrics are not comparable
    assert score({**_metrics(0.5), "scale": "explore"}, HIGH_JUDGE, ys)[0] is None
    # the version moves with the seed's metrics and the scale
    assert yardstick_version({**SEED, "probe_mean": 0.31}, "probe") != ys.version
    assert yardstick_version(SEED, "explore") != ys.version


def test_measurements_of_another_evaluation_protocol_are_not_compared(tmp_path: Path):
    """A seed measured before the evaluation changed (no eval_version: protocol 1) is no
    yardstick, the loop measures it again, and a candidate of another protocol is not scored."""
    import json

    from agents.yardstick import baselines_path, missing_reason

    old = {k: v for k, v in SEED.items() if k != "eval_version"}
    assert make_yardstick(old, "probe") is None and "protocol 1" in missing_reason(old, "probe")
    ys = make_yardstick(SEED, "probe")
    f, comps = score({**_metrics(0.5), "eval_version": 1}, HIGH_JUDGE, ys)
    assert f is None and "protocol 1" in comps["unscored"]
    lab = make_lab(tmp_path / "lab")
    path = baselines_path(lab.path, "probe")
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = {**old, "seeds": [{**{k: old[k] for k in ("status", "probe_mean", "probes")}, "seed": sd} for sd in range(3)]}
    path.write_text(json.dumps({"deltanet": stale}))
    ex = Recording()
    Loop(lab, llm="builtin", executor=ex, experiments=1, baselines=("deltanet",)).run()
    assert ex.dirs.count("deltanet") == 3  # all three seeds measured again
    assert json.loads(path.read_text())["deltanet"]["eval_version"] == EVAL_VERSION
    lab.close()


def test_lab_without_a_seed_measurement_scores_nothing_and_says_why(tmp_path: Path):
    lab = make_lab(tmp_path / "lab")
    ex = SeedFails()
    loop = Loop(lab, llm="builtin", executor=ex, experiments=2, baselines=("deltanet", "linear_attention"))
    events = []
    loop.subscribe(events.append)
    summary = loop.run()
    assert summary.state == "stopped" and summary.experiments == []
    assert lab.store.ids() == ["0000"]  # nothing committed, nothing scored
    # two tries of the seed only: its seeds side by side where they fit the cores, else one by one
    # stopping at the first failure
    per_try = len(loop._seed_list()) if loop._seed_width(len(loop._seed_list())) >= len(loop._seed_list()) else 1
    assert len(ex.evaluated) == 2 * per_try and all("deltanet" in d for d in ex.evaluated)
    warns = [e.message for e in events if isinstance(e, Warning)]
    assert any("no yardstick" in w and "too_slow" in w for w in warns), warns
    assert not any(isinstance(e, ExperimentFinished) for e in events)
    ys, why = lab_yardstick(lab.path, "probe")
    assert ys is None and "too_slow" in why
    # reindex without a yardstick: every fitness null, the reason reported
    rep = rescore_lab(lab)
    assert rep["yardstick"] is None and "too_slow" in rep["reason"] and rep["scored"] == 0
    lab.close()


def test_seed_first_comparisons_between_and_after_experiments(tmp_path: Path):
    lab = make_lab(tmp_path / "lab", seeds=1)  # one evaluation per mixer: the order is the point here
    ex = Recording()
    loop = Loop(lab, llm="builtin", executor=ex, experiments=2,
                baselines=("deltanet", "linear_attention", "gla", "retnet"))
    events = []
    loop.subscribe(events.append)
    loop.run()
    assert ex.dirs[0] == "deltanet" and ex.dirs[1] == "experiment"  # only the seed blocks the start
    assert ex.dirs[2] == "linear_attention" and ex.dirs[3] == "experiment"  # one between experiments
    assert ex.dirs[4:] == ["gla", "retnet"]  # the rest when the budget is spent
    progress = [(e.name, e.index, e.total) for e in events if isinstance(e, BaselineProgress) and e.status == "started"]
    assert progress == [("deltanet", 0, 0), ("linear_attention", 1, 3), ("gla", 2, 3), ("retnet", 3, 3)]
    ys = loop.yardstick()
    finished = [lab.store.get(e["id"]) for e in loop.summary.experiments]
    assert all(r.fitness is not None and r.yardstick == ys.version for r in finished if r.status == "accepted")
    lab.close()


def _commit(lab: Lab, exp_id: str, metrics: dict, judge: dict, status: str = "accepted") -> None:
    ys, why = lab_yardstick(lab.path, "probe")
    rec = ExperimentRecord(id=exp_id, name=f"design {exp_id}", parent="0000", status=status, metrics=metrics,
                           scale="probe", motivation=f"design {exp_id} {random.random()}")
    rec.fitness, rec.fitness_components = score(metrics, judge, ys, status, why)
    rec.yardstick = ys.version if ys else ""
    lab.commit(rec, novelty=False)


def _write_seed(lab: Lab, seed: dict) -> None:
    d = lab.path / "baselines"
    d.mkdir(exist_ok=True)
    (d / "probe.json").write_text(json.dumps({"deltanet": seed}))


def test_rescore_moves_fitness_and_best_and_keeps_metrics(tmp_path: Path):
    lab = make_lab(tmp_path / "lab")
    _write_seed(lab, SEED)  # seed probe mean 0.3: both designs beat it by more than the clip
    _commit(lab, "0001", _metrics(0.5), HIGH_JUDGE)
    _commit(lab, "0002", _metrics(0.9), LOW_JUDGE)
    _commit(lab, "0003", _metrics(0.95), HIGH_JUDGE, status="too_slow")
    assert lab.store.best().id == "0001"  # the judge decides while both saturate
    before = {i: lab.store.get(i).metrics for i in ("0001", "0002", "0003")}
    f1 = lab.index.get("0001")["fitness"]

    _write_seed(lab, {**SEED, "probes": {"mqar": 0.8, "noisy_recall": 0.8}, "probe_mean": 0.8})  # re-measured
    rep = rescore_lab(lab)
    assert rep["best_before"] == "0001" and rep["best"] == "0002" and rep["best_moved"]
    assert "0001" in rep["changed"] and "0002" not in rep["changed"]  # 0002 stays saturated
    assert lab.store.best().id == "0002"
    assert lab.index.get("0001")["fitness"] < f1
    assert lab.index.get("0003")["fitness"] is None  # too_slow: never a fitness
    assert lab.index.get("0001")["yardstick"] == rep["yardstick"]
    assert {i: lab.store.get(i).metrics for i in before} == before  # records keep their metrics
    assert lab.candidates.top(1)[0]["id"] == "0002"
    lab.close()

    # derived data survives reopening (and a rebuild of the index from git)
    lab = Lab.open(tmp_path / "lab")
    assert lab.index.get("0002")["fitness"] == rep_fitness(lab, "0002")
    lab.index.rebuild(lab.store)
    assert lab.store.best().id == "0002" and lab.candidates.top(1)[0]["id"] == "0002"
    # a new experiment is compared with the re-scored best, not the committed one
    _commit(lab, "0004", _metrics(0.85), HIGH_JUDGE)
    assert lab.store.best().id == ("0004" if rep_fitness(lab, "0004") > rep_fitness(lab, "0002") else "0002")
    lab.close()


def rep_fitness(lab: Lab, exp_id: str) -> float | None:
    return lab.scores.fitness(exp_id, lab.store.get(exp_id).fitness)


def test_loop_rescores_when_the_seed_was_measured_after_experiments(tmp_path: Path):
    """The issue's case: children scored while the seed was unmeasured must not stay best."""
    lab = make_lab(tmp_path / "lab", seeds=1)  # the seed written below is one measurement
    # an older version scored two children without a yardstick (fitness from the judge alone)
    for i, (pm, fit) in enumerate(((0.35, 0.7), (0.7, 0.6)), start=1):
        rec = ExperimentRecord(id=f"{i:04d}", name=f"child {i}", parent="0000", metrics=_metrics(pm), scale="probe",
                               fitness=fit, fitness_components={"judge": LOW_JUDGE}, motivation=f"child {i}")
        lab.commit(rec, novelty=False)
    assert lab.store.best().id == "0001"
    _write_seed(lab, {**SEED, "probes": {"mqar": 0.63, "noisy_recall": 0.63}, "probe_mean": 0.63})
    loop = Loop(lab, llm="builtin", executor=FakeExecutor(), experiments=0, baselines=("deltanet",))
    loop.budget_experiments = 0
    report = loop.rescore_if_needed()
    assert report is not None and report["best"] == "0002" and lab.store.best().id == "0002"
    assert loop.rescore_if_needed() is None  # nothing left to do
    lab.close()


@pytest.mark.parametrize("bad", [{"cpu_factor": -1}])
def test_guards_config_is_validated(bad):
    from archive.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="guards"):
        config_from_dict({"guards": bad})
    cfg = config_from_dict({"guards": {"cpu_factor": 4}})
    assert cfg.guards.cpu_factor == 4.0 and cfg.guards.min_wall_s == 600.0


def test_reindex_cli_rescores_and_reports(tmp_path: Path):
    from typer.testing import CliRunner

    from asiarch_tui.cli import app

    lab = make_lab(tmp_path / "lab")
    _write_seed(lab, SEED)
    _commit(lab, "0001", _metrics(0.5), HIGH_JUDGE)
    _commit(lab, "0002", _metrics(0.9), LOW_JUDGE)
    lab.close()
    lab = Lab.open(tmp_path / "lab")
    _write_seed(lab, {**SEED, "probes": {"mqar": 0.8, "noisy_recall": 0.8}, "probe_mean": 0.8})
    lab.close()
    res = CliRunner().invoke(app, ["reindex", "--lab", str(tmp_path / "lab"), "--no-novelty"])
    out = " ".join(res.output.split())
    assert res.exit_code == 0, out
    assert "re-scored 2 experiments" in out and "best moved 0001 -> 0002" in out
    lab = Lab.open(tmp_path / "lab")
    assert lab.store.best().id == "0002"
    lab.close()
    # no yardstick: said so, every fitness null
    (tmp_path / "lab" / "baselines" / "probe.json").unlink()
    res = CliRunner().invoke(app, ["reindex", "--lab", str(tmp_path / "lab"), "--no-novelty"])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "no yardstick" in out and "not been measured" in out
    lab = Lab.open(tmp_path / "lab")
    assert all(d["fitness"] is None for d in lab.index.all()) and lab.store.best() is None
    lab.close()


def test_baselines_lab_cli_measures_seed_then_pending(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from asiarch_tui.cli import app

    lab = make_lab(tmp_path / "lab")
    lab.close()
    monkeypatch.setattr(Loop, "_make_executor", lambda self: FakeExecutor())
    res = CliRunner().invoke(app, ["baselines", str(tmp_path / "lab"), "--only", "linear_attention,gla", "--json"])
    assert res.exit_code == 0, res.output
    assert "measuring the seed (deltanet)" in res.stderr and "measuring baselines 2/2: gla" in res.stderr
    ranked = json.loads(res.stdout)
    assert {r["name"] for r in ranked} == {"deltanet", "linear_attention", "gla"}
    cached = json.loads((tmp_path / "lab" / "baselines" / "probe.json").read_text())
    assert set(cached) == {"deltanet", "linear_attention", "gla"}
    lab = Lab.open(tmp_path / "lab")
    assert any(r.extra.get("measures") == "0000" for r in lab.store.all())  # the seed record measured
    lab.close()


class SlowDesigns(FakeExecutor):
    """The seed and baselines are fine; every experiment trips the efficiency guard."""

    def evaluate(self, path, run_dir, seed, baseline, on_line=None):
        if "baselines" in Path(run_dir).parts:
            return super().evaluate(path, run_dir, seed, baseline, on_line)
        m = {"scale": "probe", "seed": seed, "status": "too_slow", "partial": True,
             "probes": {"mqar": 0.9, "noisy_recall": None}, "probe_mean": None, "probe_mean_partial": 0.9,
             "probes_done": 1, "probes_total": 2, "stop_reason": "too slow: 401 CPU s exceeds 400 CPU s",
             "throughput_vs_seed": 0.06, "val_loss": None, "cpu_seconds": 401.0}
        return StepResult(False, [], m, error=m["stop_reason"])


def test_a_too_slow_design_is_committed_as_such_without_fitness(tmp_path: Path):
    lab = make_lab(tmp_path / "lab")
    loop = Loop(lab, llm="builtin", executor=SlowDesigns(), experiments=1, baselines=("deltanet",))
    events = []
    loop.subscribe(events.append)
    loop.run()
    done = [e for e in events if isinstance(e, ExperimentFinished) and e.reason != "seed measured"]
    assert len(done) == 1 and done[0].status == "too_slow" and done[0].fitness is None
    assert "throughput 0.06x the seed's" in done[0].reason
    rec = lab.store.get(done[0].exp_id)
    assert rec.status == "too_slow" and rec.fitness is None and rec.metrics["partial"] is True
    assert "status too_slow" in rec.fitness_components["unscored"]
    assert lab.store.best().id != rec.id
    lab.close()


def test_status_bar_says_measuring_baselines():
    from asiarch_tui.app import baseline_status
    from asiarch_tui.panels import StatusBar

    assert baseline_status(BaselineProgress(name="deltanet", seed=True)) == "measuring the seed (experiments wait)"
    assert baseline_status(BaselineProgress(name="gla", index=2, total=5)) == "measuring baselines 2/5"
    assert baseline_status(BaselineProgress(name="gla", index=2, total=5, status="finished")) == ""
    bar = StatusBar()
    bar.values.update(baselines="measuring baselines 2/5")
    assert "measuring baselines 2/5" in bar.render_status().plain


class Overlapping(FakeExecutor):
    """Records how many evaluations are in flight at once (a barrier-free count: each call waits
    until ``want`` are in flight, or a short while)."""

    def __init__(self, want: int = 2) -> None:
        super().__init__()
        import threading

        self.want = want
        self._lock = threading.Lock()
        self._second = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[tuple[str, int]] = []

    def evaluate(self, path, run_dir, seed, baseline, on_line=None):
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.calls.append((Path(run_dir).name, seed))
            if self.in_flight >= self.want:
                self._second.set()
        try:
            self._second.wait(5.0)  # not a timed assert: it only gives a parallel caller the chance to start
            return super().evaluate(path, run_dir, seed, baseline, on_line)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_the_seeds_of_the_seed_run_side_by_side(tmp_path: Path, monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    lab = make_lab(tmp_path / "lab")
    ex = Overlapping(want=3)
    loop = Loop(lab, llm="builtin", executor=ex, experiments=0, baselines=("deltanet",))
    assert loop.seed_parallelism() == 2
    metrics = loop.measure_baseline("deltanet")
    seeds = [sd for _, sd in ex.calls]
    assert sorted(seeds) == loop._seed_list() == [0, 1, 2]
    # 3 seeds on 2 cores: all three at once (1.5 run times, where 1 + 2 would take 2)
    assert ex.max_in_flight == 3
    assert metrics["n_seeds"] == len(loop._seed_list())
    assert loop._seed_width(2) == 2 and loop._seed_width(3) == 3 and loop._seed_width(5) == 2
    # one core (or as many workers as cores): one at a time
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert loop.seed_parallelism() == 1 and loop._seed_width(3) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    loop.concurrency = 2
    assert loop.seed_parallelism() == 2


def test_while_the_top_is_not_full_a_candidates_seeds_run_beside_its_rung_0(tmp_path: Path, monkeypatch):
    """Any finite rung-0 result earns the other seeds while fewer than top_k_seeds designs have
    several: the loop runs all three at once instead of rung 0 and then two; once the top is
    full, rung 0 runs alone again (successive halving decides)."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    lab = make_lab(tmp_path / "lab")
    ex = Overlapping(want=3)
    loop = Loop(lab, llm="builtin", executor=ex, experiments=1, baselines=("deltanet",))
    loop.run()
    first = [c for c in ex.calls if not c[0].startswith("seed-")]  # the candidate's runs
    assert sorted(sd for _, sd in first) == [0, 1, 2] and ex.max_in_flight == 3
    assert {name for name, _ in first} == {"eval_r1", "eval_r1_seed1", "eval_r1_seed2"}
    rec = next(r for r in lab.store.all() if r.id == "0002")
    assert rec.metrics["n_seeds"] == 3 and rec.status == "accepted"
    assert loop._side_seeds() == (1, 2)  # 2 multi-seed designs < top_k_seeds
    loop.top_k_seeds = 2
    assert loop._side_seeds() == ()
