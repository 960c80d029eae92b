"""The verify scale end to end: lm-eval tasks on the trained model (scored by the sandbox harness
from the worker's logits), the verify-mini scale, the benchmark term of fitness, and the promotion
of a lab's top designs to a higher scale as child commits (``asiarch-tui verify``)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from agents.climb import LADDER, ClimbError, rank_designs, scales_reached, verify_lab
from agents.engineer import StepResult
from agents.fitness import benchmark_of, compute_fitness
from asiarch_tui.cli import app
from tests.cli_helpers import cli_text
from tests.loop_helpers import make_lab
from training.evaluate import EVAL_VERSION
from training.lm_eval_bridge import DEFAULT_TASKS, LMEvalError, harness_version, score_tasks
from training.scales import SCALES, get_scale

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


class Bigram(nn.Module):
    """A fixed causal byte model: logits depend on the current byte only."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(256, 256, generator=g))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def test_verify_mini_and_verify_scales():
    mini, full = get_scale("verify-mini"), get_scale("verify")
    assert mini.benchmark == "lm_eval" and full.benchmark == "lm_eval"
    assert get_scale("explore").benchmark == "probes" and get_scale("demo").benchmark == "probes"
    assert len(mini.lm_eval_tasks) == 2 and mini.device == "cpu" and full.device == "cuda"
    # offline by default: every task of both scales is shipped
    assert set(mini.lm_eval_tasks) <= set(DEFAULT_TASKS) and set(full.lm_eval_tasks) <= set(DEFAULT_TASKS)
    assert mini.lm_tokens < full.lm_tokens / 500
    assert LADDER.index("explore") < LADDER.index("verify-mini") < LADDER.index("verify")
    assert set(LADDER) == set(SCALES)


def test_score_tasks_record_and_hub_refusal():
    res = score_tasks(Bigram(), ("shakespeare_cloze", "probe_noisy_recall"), limit=12, max_length=64, batch_size=8)
    assert res["harness"] == harness_version() and res["harness"].startswith("lm-eval 0.4")
    assert set(res["tasks"]) == {"shakespeare_cloze", "probe_noisy_recall"}
    for v in res["tasks"].values():
        assert v["metric"] == "acc" and 0.0 <= v["score"] <= 1.0 and v["n"] == 12
        assert v["stderr"] is not None and v["stderr"] >= 0.0
    assert math.isclose(res["mean"], sum(v["score"] for v in res["tasks"].values()) / 2)
    with pytest.raises(LMEvalError, match="Hugging Face hub and needs a network"):
        score_tasks(Bigram(), ("shakespeare_cloze", "hellaswag"), limit=2)


def test_fitness_benchmark_term_is_the_task_mean():
    base = {"val_loss": 2.0, "probe_mean": 0.5, "benchmark_kind": "lm_eval", "benchmark": 0.40}
    better = {"val_loss": 2.0, "probe_mean": 0.1, "benchmark_kind": "lm_eval", "benchmark": 0.44}
    assert benchmark_of(better) == 0.44 and benchmark_of({"probe_mean": 0.3}) == 0.3
    _, comps = compute_fitness(better, base, None)
    assert comps["measured"]["s_score"] and comps["s_score"] > 0.9  # +10%: the probes (worse) are diagnostics
    _, mixed = compute_fitness(better, {"val_loss": 2.0, "probe_mean": 0.5}, None)
    assert not mixed["measured"]["s_score"]  # an lm-eval mean is never compared with a probe mean


@pytest.mark.slow
def test_eval_verify_mini_end_to_end_in_the_sandbox():
    """The same code path as verify: LM training in the sandboxed worker, then the lm-eval tasks
    scored by the harness from the trained model's logits."""
    res = CliRunner().invoke(app, ["eval", str(ROOT / "training/mixers/deltanet.py"), "--scale", "verify-mini",
                                   "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["status"] == "ok" and not m["partial"] and m["benchmark_kind"] == "lm_eval"
    lm = m["lm_eval"]
    assert lm["computed_by"] == "harness" and lm["logit_calls"] > 0 and lm["harness"] == harness_version()
    scale = get_scale("verify-mini")
    assert list(lm["tasks"]) == list(scale.lm_eval_tasks)
    for v in lm["tasks"].values():
        assert 0.0 <= v["score"] <= 1.0 and v["n"] == scale.lm_eval_limit and v["stderr"] is not None
    assert math.isclose(m["benchmark"], sum(v["score"] for v in lm["tasks"].values()) / 2)
    assert m["probe_mean"] is not None and m["val_bpb"] < 6.0  # probes kept as diagnostics; the LM learned
    # the trained LM was checked for causality on a validation batch and on an lm-eval request batch
    after = m["causality_after_training"]
    assert after["checked"] and after["violation"] is None and after["max_change"] <= after["tol"]
    assert {"lm", "lm (lm-eval requests)"} <= set(after["models"])
    assert after["batch"]["lm"] == scale.batch_size and after["length"]["lm"] == scale.seq_len


# ---------------------------------------------------------------------- promotion between scales
class VerifyExecutor:
    """Deterministic verify-mini metrics from the code (never runs it): a design whose code holds
    ``GOOD`` scores higher on the lm-eval tasks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def evaluate(self, path, run_dir, seed, baseline, on_line=None, trusted=False):
        code = Path(path).read_text()
        self.calls.append((code[:40], seed))
        good = 0.1 if "GOOD" in code else 0.0
        tasks = {"shakespeare_cloze": 0.25 + good + 0.01 * seed, "probe_noisy_recall": 0.05 + good}
        m = {"status": "ok", "partial": False, "seed": seed, "eval_version": EVAL_VERSION, "scale": "verify-mini",
             "val_loss": 2.5 - good,
             "val_bpb": (2.5 - good) / math.log(2), "probe_mean": 0.2, "probes": {"noisy_recall": 0.2},
             "probes_total": 1, "benchmark_kind": "lm_eval", "lm_eval_tasks": list(tasks),
             "benchmark": sum(tasks.values()) / 2,
             "lm_eval": {"harness": harness_version(), "tasks": {t: {"metric": "acc", "score": s, "stderr": 0.01,
                                                                      "n": 100} for t, s in tasks.items()}}}
        return StepResult(True, [], m)


def _design(lab, name: str, code: str, fitness_seeds: dict[int, float]):
    from archive.record import ExperimentRecord

    mean = sum(fitness_seeds.values()) / len(fitness_seeds)
    rec = ExperimentRecord(id="", name=name, parent="0000", status="accepted", motivation=f"{name} design",
                           code=code, metrics={"status": "ok", "scale": "probe", "probe_mean": 0.5},
                           fitness=mean, fitness_seeds={str(k): v for k, v in fitness_seeds.items()},
                           fitness_components={"fitness_seeds": {str(k): v for k, v in fitness_seeds.items()}},
                           scale="probe", promotion={"promoted": False, "outcome": "tied"})
    lab.commit(rec, novelty=False)
    return rec.id


def test_rank_designs_follows_the_promotion_rule():
    designs = [("a", 0.60, {0: 0.60, 1: 0.60}), ("b", 0.70, {0: 0.69, 1: 0.71}), ("one", 0.99, {0: 0.99}),
               ("c", 0.62, {0: 0.50, 1: 0.74})]
    assert rank_designs(designs) == ["b", "c", "a"]  # one seed never ranks


def test_verify_commits_children_at_the_higher_scale(tmp_path):
    from archive.lab import Lab

    path = tmp_path / "lab"
    lab = make_lab(path)
    seed_code = lab.store.read_file("0000", "mixer.py").decode()
    ids = {
        "good": _design(lab, "good", seed_code + "\n# GOOD\n", {0: 0.70, 1: 0.71}),
        "ok": _design(lab, "ok", seed_code + "\n# fine\n", {0: 0.62, 1: 0.64}),
        "low": _design(lab, "low", seed_code + "\n# low\n", {0: 0.40, 1: 0.42}),
        "single": _design(lab, "single", seed_code + "\n# one seed\n", {0: 0.99}),
    }
    best_before = lab.store.best_id()
    ex = VerifyExecutor()
    with pytest.raises(ClimbError, match="at least 2"):
        verify_lab(lab, top=2, scale="verify-mini", seeds=1, executor=ex)
    with pytest.raises(ClimbError, match="not above"):
        verify_lab(lab, top=2, scale="demo", seeds=2, executor=ex)
    results = verify_lab(lab, top=2, scale="verify-mini", seeds=2, executor=ex)
    assert [r.design for r in results] == [ids["good"], ids["ok"]]
    # the seed (yardstick) first, then each design, each on seeds 0 and 1 (a design's seeds may
    # start side by side, in either order)
    seeds = [s for _, s in ex.calls]
    assert len(seeds) == 6 and all(sorted(seeds[i:i + 2]) == [0, 1] for i in (0, 2, 4)), seeds
    for r in results:
        child = lab.store.get(r.child)
        assert child.parent == r.design and child.scale == "verify-mini" and child.status == "accepted"
        assert child.code == lab.store.get(r.design).code
        assert child.promotion["outcome"] == "scale" and len(child.metrics["seeds"]) == 2
        assert child.fitness is not None and child.fitness_interval is not None
        assert set(r.tasks) == {"shakespeare_cloze", "probe_noisy_recall"}
        assert scales_reached(lab.store, r.design) == ["probe", "verify-mini"]
    good, fine = (lab.store.get(r.child) for r in results)
    assert good.fitness > fine.fitness  # scored against the seed's verify-mini yardstick
    assert scales_reached(lab.store, ids["low"]) == ["probe"]
    assert lab.store.best_id() == best_before  # a climb never moves best
    # `git log` of a child shows the climb: the child at verify-mini, then its design at probe
    for r in results:
        log = subprocess.run(["git", "--git-dir", str(lab.store.path), "log", "--format=%b%x00",
                              lab.store.commit_of(r.child)], capture_output=True, text=True, check=True).stdout
        bodies = [b for b in log.split("\0") if b.strip()]
        assert "Scale: verify-mini" in bodies[0] and f"Parent: {r.design}" in bodies[0]
        assert "Scale: probe" in bodies[1] and f"Experiment-Id: {r.design}" in bodies[1]
        assert all("Scale: verify-mini" not in b for b in bodies[1:])
    # again: already there, nothing re-run
    n = len(ex.calls)
    again = verify_lab(lab, top=2, scale="verify-mini", seeds=2, executor=ex)
    assert all(r.skipped.startswith("already evaluated") for r in again) and len(ex.calls) == n
    lab.close()
    # a re-score keeps the children scored against their own scale's yardstick and best in place
    from agents.yardstick import rescore_lab

    lab = Lab.open(path)
    out = rescore_lab(lab)
    assert lab.scores.fitness(results[0].child, None) == pytest.approx(good.fitness)
    assert out["best"] != results[0].child and out["best"] != results[1].child
    lab.close()


def test_verify_cli_needs_scored_designs(tmp_path):
    path = tmp_path / "lab"
    make_lab(path).close()
    res = CliRunner().invoke(app, ["verify", str(path), "--top", "2", "--scale", "verify-mini"])
    assert res.exit_code == 1 and "on at least 2 seeds" in res.output
    res = CliRunner().invoke(app, ["verify", str(path), "--scale", "huge"])
    assert res.exit_code == 2 and "'huge' is not one of 'demo', 'probe'" in cli_text(res)


def test_console_tree_shows_the_scales_a_design_reached():
    from asiarch_tui.widgets import LineageTree, metric_rows, node_label

    tree = LineageTree()
    tree.load([{"id": "0001", "name": "wide", "status": "accepted", "fitness": 0.6, "scale": "probe"},
               {"id": "0002", "name": "wide", "parent": "0001", "status": "accepted", "fitness": 0.55,
                "scale": "verify-mini", "promotion": "scale"}], best_id="0001")
    assert "⇡verify-mini" in tree._label("0001").plain
    assert "@verify-mini" in tree._label("0002").plain and "⇡" not in tree._label("0002").plain
    assert "⇡" not in node_label({"id": "0003", "name": "x", "status": "accepted"}, None).plain
    rows = dict(metric_rows({"benchmark_kind": "lm_eval", "benchmark": 0.2,
                             "lm_eval": {"tasks": {"shakespeare_cloze": {"score": 0.2}}}}))
    assert rows["benchmark"] == "lm-eval mean" and "lm_eval.tasks.shakespeare_cloze.score" in rows


def test_eval_refuses_hub_tasks_before_training():
    deltanet = str(ROOT / "training/mixers/deltanet.py")
    res = CliRunner().invoke(app, ["eval", deltanet, "--scale", "verify-mini", "--lm-eval-tasks",
                                   "shakespeare_cloze,hellaswag"])
    assert res.exit_code == 2 and "hellaswag" in res.output and "network" in res.output
    res = CliRunner().invoke(app, ["eval", deltanet, "--scale", "demo", "--lm-eval-tasks", "shakespeare_cloze"])
    assert res.exit_code == 2 and "trains no language model" in res.output
