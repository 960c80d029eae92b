"""Noise-aware discovery wired through: per-seed metrics, fitness intervals, the promotion-aware
``best`` ref, parents from multi-seed designs, and the loop's successive halving."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agents.analyst import BuiltinAnalyst
from agents.loop import Loop
from agents.seeds import combine, fitness_of, per_seed, screen_of, versus
from archive.candidates import CandidateSet
from archive.embed import HashEmbedder
from archive.lab import Lab
from archive.record import ExperimentRecord
from archive.synth import BASE_CODE
from tests.loop_helpers import FakeExecutor, make_lab
from training.evaluate import EVAL_VERSION


def _run(seed: int, pm: float, status: str = "ok") -> dict:
    return {"seed": seed, "eval_version": EVAL_VERSION, "status": status, "probe_mean": pm, "probes": {"mqar": pm}, "val_loss": None,
            "cpu_seconds": 10.0 + seed, "mixer_params": 100, "loss_curve": [[1, 2.0]]}


def test_combine_means_spread_and_status():
    m = combine([_run(0, 0.5), _run(1, 0.6), _run(2, 0.7)])
    assert m["n_seeds"] == 3 and [e["seed"] for e in m["seeds"]] == [0, 1, 2]
    assert m["probe_mean"] == pytest.approx(0.6) and m["probes"]["mqar"] == pytest.approx(0.6)
    assert m["spread"]["probe_mean"]["std"] == pytest.approx(0.1) and m["spread"]["probes.mqar"]["n"] == 3
    assert m["loss_curve"] == [[1, 2.0]] and m["cpu_seconds"] == pytest.approx(11.0)
    bad = combine([_run(0, 0.5), dict(_run(1, 0.1), status="too_slow", stop_reason="slow")])
    assert bad["status"] == "too_slow" and bad["stop_reason"] == "slow"
    legacy = per_seed({"status": "ok", "seed": 4, "probe_mean": 0.3})  # a record from before seeds
    assert len(legacy) == 1 and legacy[0]["seed"] == 4 and legacy[0]["probe_mean"] == 0.3
    assert per_seed({}) == []
    with pytest.raises(ValueError):
        combine([])


def test_fitness_of_a_multi_seed_design():
    base = combine([_run(s, 0.5) for s in range(3)])
    m = combine([_run(0, 0.52), _run(1, 0.53), _run(2, 0.51)])
    f, comps, interval, fs = fitness_of(m, base, None)
    assert sorted(fs) == [0, 1, 2] and f == pytest.approx(sum(fs.values()) / 3, abs=1e-6)
    assert interval[0] < f < interval[1] and comps["n_seeds"] == 3
    one = combine([_run(0, 0.52)])
    assert fitness_of(one, base, None)[2] is None
    assert fitness_of(combine([_run(0, 0.5, "error")]), base, None)[0] is None
    assert screen_of({"s_loss": 0.5, "s_score": 0.9, "measured": {"s_score": True}}) == pytest.approx(0.7)
    assert screen_of({"measured": {}}) is None
    assert versus(m, base, "probe_mean").promoted  # ahead on each shared seed


def test_analyst_says_beats_the_seed_by_the_rule():
    base = combine([_run(s, 0.5 + 0.01 * s) for s in range(3)])
    rec = ExperimentRecord(id="0002", name="x", metrics=combine([_run(s, 0.6 + 0.01 * s) for s in range(3)]))
    text = BuiltinAnalyst().analyse(rec, None, [], {"deltanet": base}).results
    assert "probe mean 0.610 ± 0.010 (3 seeds) beats the seed" in text
    tied = ExperimentRecord(id="0003", name="y", metrics=combine([_run(0, 0.49), _run(1, 0.52), _run(2, 0.50)]))
    assert "tied with the seed (within noise)" in BuiltinAnalyst().analyse(tied, None, [], {"deltanet": base}).results


def test_best_moves_only_by_promotion_and_recover_replays_it(tmp_path: Path):
    lab = Lab.init(tmp_path / "lab", seed_code=BASE_CODE, embedder=HashEmbedder())

    def rec(i: int, fitness: float, promoted: bool | None) -> ExperimentRecord:
        r = ExperimentRecord(id=f"{i:04d}", name=f"d{i}", parent="0000", code=BASE_CODE, metrics={"status": "ok"},
                             fitness=fitness)
        if promoted is not None:
            r.promotion = {"promoted": promoted, "outcome": "promoted" if promoted else "single_seed"}
        return r

    lab.commit(rec(1, 0.5, True))
    lab.commit(rec(2, 0.9, False))  # higher, but one seed: not promoted
    assert lab.store.best_id() == "0001"
    lab.commit(rec(3, 0.6, True))
    assert lab.store.best_id() == "0003"
    assert lab.store.compute_best() == "0003"
    lab.store._write_ref("refs/heads/best", lab.store.commit_of("0002"))  # a crash left best wrong
    lab.store.recover(remove_stale=False)
    assert lab.store.best_id() == "0003"
    assert lab.index.get("0002")["promotion"] == "single_seed"
    lab.close()


def test_parents_only_from_multi_seed_designs():
    class Idx:
        def all(self):
            return [{"id": "0001", "status": "accepted", "fitness": 0.9, "n_seeds": 1},
                    {"id": "0002", "status": "accepted", "fitness": 0.6, "n_seeds": 3},
                    {"id": "0003", "status": "accepted", "fitness": 0.5, "n_seeds": 3}]

    class Store:
        def get(self, i):
            return type("R", (), {"id": i})()

    cs = CandidateSet(Idx(), Store())
    assert [d["id"] for d in cs.parent_pool()] == ["0002", "0003"]
    rng = random.Random(0)
    assert {cs.sample_parent(rng).id for _ in range(50)} == {"0002", "0003"}
    # none with 2 seeds: every candidate (a lab made before multi-seed evaluation)
    cs1 = CandidateSet(type("I", (), {"all": lambda self: [dict(d, n_seeds=1) for d in Idx().all()]})(), Store())
    assert len(cs1.parent_pool()) == 3


class NoisyExecutor(FakeExecutor):
    """FakeExecutor metrics plus per-seed Gaussian noise on the probes (deterministic)."""

    def evaluate(self, path, run_dir, seed, baseline, on_line=None):
        res = super().evaluate(path, run_dir, seed, baseline, on_line)
        rng = random.Random(f"{seed}-{Path(path).read_text()}")
        probes = {k: min(1.0, max(0.0, v + rng.gauss(0.0, 0.02))) for k, v in res.metrics["probes"].items()}
        res.metrics.update(probes=probes, probe_mean=sum(probes.values()) / len(probes), cpu_seconds=10.0)
        return res


def test_loop_measures_the_top_on_three_seeds_and_promotes_by_the_rule(tmp_path):
    lab = make_lab(tmp_path / "lab", top_k_seeds=2)
    ex = NoisyExecutor()
    events = []
    loop = Loop(lab, llm="builtin", executor=ex, experiments=6, backoff_s=0, baselines=("deltanet",))
    loop.subscribe(events.append)
    loop.run()
    recs = {r.id: r for r in lab.store.all()}
    seed = recs["0001"]
    assert seed.extra["measures"] == "0000" and len(seed.metrics["seeds"]) == 3
    assert seed.fitness_interval and seed.promotion["promoted"]  # the first multi-seed design
    assert seed.fitness_components["judge"]["judge"] == "builtin"  # the seed is judged too
    cands = [r for r in recs.values() if r.genome and r.id not in ("0000", "0001") and r.metrics]
    assert cands
    n = [len(per_seed(r.metrics)) for r in cands]
    assert set(n) <= {1, 3} and 3 in n
    assert len(ex.evaluated) == 3 + sum(n)  # the seed's 3, then each candidate's
    for r in cands:
        if len(per_seed(r.metrics)) == 1:
            assert r.fitness_interval is None and not r.promotion["promoted"]
        else:
            assert r.fitness_interval[0] <= r.fitness <= r.fitness_interval[1]
    best = lab.store.best()
    assert best.promotion["promoted"] and len(best.fitness_seeds) >= 2
    # the best is the last promoted design, whatever the highest single number
    promoted = [r.id for r in sorted(recs.values(), key=lambda r: r.id) if (r.promotion or {}).get("promoted")]
    assert best.id == promoted[-1]
    stages = {e.stage for e in events if type(e).__name__ == "StageChanged"}
    assert "seeds" in stages
    # parents come from designs with >= 2 seeds
    multi = {r.id for r in recs.values() if len(per_seed(r.metrics)) >= 2}
    assert all(r.parent in multi | {"0000"} for r in cands)
    assert all(r.reproduce.get("seeds") for r in cands)


def test_rescore_replays_the_promotion_rule(tmp_path):
    """A re-score (new yardstick) decides best again by the promotion rule, not the highest mean."""
    import json

    from agents.yardstick import lab_yardstick, rescore_lab, score

    lab = make_lab(tmp_path / "lab")

    def metrics(pms):
        return combine([dict(_run(s, pm), scale="probe", partial=False) for s, pm in enumerate(pms)])

    def write_seed(pm):
        (lab.path / "baselines").mkdir(exist_ok=True)
        (lab.path / "baselines" / "probe.json").write_text(json.dumps({"deltanet": metrics([pm, pm + 0.01, pm - 0.01])}))

    write_seed(0.30)
    ys, _ = lab_yardstick(lab.path, "probe")
    designs = {"0001": [0.31, 0.32, 0.30], "0002": [0.33, 0.29, 0.31], "0003": [0.36]}  # 0003: one seed
    for exp_id, pms in designs.items():
        rec = ExperimentRecord(id=exp_id, name=f"d{exp_id}", parent="0000", metrics=metrics(pms), scale="probe",
                               motivation=f"design {exp_id}")
        rec.fitness, rec.fitness_components = score(rec.metrics, None, ys)
        rec.fitness_interval = rec.fitness_components["fitness_interval"]
        rec.fitness_seeds = rec.fitness_components["fitness_seeds"]
        rec.promotion = {"promoted": exp_id == "0001", "outcome": "promoted" if exp_id == "0001" else "tied"}
        lab.commit(rec, novelty=False)
    assert lab.store.best_id() == "0001"
    write_seed(0.20)  # the seed re-measured lower: everything re-scored
    rep = rescore_lab(lab, "probe")
    assert rep["best"] == lab.store.best_id()
    # the one-seed design has the highest mean but is never promoted
    assert lab.scores.get("0003")["fitness_components"]["promotion"] == "single_seed"
    assert lab.store.best_id() in ("0001", "0002")
    assert lab.index.get("0003")["promotion"] == "single_seed"
    assert lab.index.get("0001")["fitness_interval"] is not None
    assert lab.store.compute_best() == lab.store.best_id()  # recovery agrees with the re-score
    lab.close()
