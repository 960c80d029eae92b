"""The research loop's logic with a real lab and the scripted LLM, and a fake (fast) executor.

The sandboxed check/evaluate path is exercised for real in test_loop_sandbox.py."""

from __future__ import annotations

import math
import threading
import time

import pytest

from agents.events import (
    AgentMessage,
    ApprovalRequested,
    ExperimentFinished,
    LoopStateChanged,
    StageChanged,
    Warning,
    read_events,
)
from agents.fitness import compute_fitness, s_judge, s_loss, s_score
from agents.loop import Loop
from tests.standin import StandInResearcher
from tests.fake_llm_server import FakeLLMServer, Reply, ScriptedResponder
from tests.loop_helpers import ANALYSIS, DELTANET, JUDGE, FakeExecutor, broken, make_lab, proposal


def test_fitness_formula():
    assert s_loss(1.0, 1.0) == pytest.approx(0.5)
    # (L0 - L) / (0.1 L0) = 0.5 -> sigma(3); clipped at +-1 -> sigma(+-6)
    assert s_loss(0.95, 1.0) == pytest.approx(1 / (1 + math.exp(-3)))
    assert s_loss(0.5, 1.0) == pytest.approx(1 / (1 + math.exp(-6)))
    assert s_loss(2.0, 1.0) == pytest.approx(1 / (1 + math.exp(6)))
    assert s_score(0.6, 0.5) == pytest.approx(1 / (1 + math.exp(-6)))
    assert s_score(0.51, 0.5) == pytest.approx(1 / (1 + math.exp(-1.2)))
    assert s_judge(10, 10, 10) == 1.0 and s_judge(1, 1, 1) == 0.0
    f, c = compute_fitness({"val_loss": 1.0, "probe_mean": 0.5}, {"val_loss": 1.0, "probe_mean": 0.5},
                           {"performance": 1, "innovation": 1, "complexity": 1})
    assert f == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert all(c["measured"].values())
    # unmeasured components count 0.5 and are marked
    f, c = compute_fitness({"val_loss": None, "probe_mean": 0.5}, {"probe_mean": 0.5}, None)
    assert f == pytest.approx(0.5) and c["measured"] == {"s_loss": False, "s_score": True, "s_judge": False}
    # a loss >10% below the seed's is a suspected leak, not a win
    f, c = compute_fitness({"val_loss": 0.8, "probe_mean": 0.5}, {"val_loss": 1.0, "probe_mean": 0.5}, None)
    assert c["leak_suspected"] and c["s_loss"] == 0.5 and not c["measured"]["s_loss"]


def _responder(*researcher, debugger=(), analyst=(ANALYSIS,), judge=(JUDGE,)):
    r = ScriptedResponder(default=lambda role, req: {"analyst": ANALYSIS, "judge": JUDGE}.get(role, Reply(status=500)))
    r.add("researcher", *researcher)
    r.add("debugger", *debugger)
    r.add("analyst", *analyst)
    r.add("judge", *judge)
    return r


def test_cycle_with_near_duplicate_and_debugger(tmp_path):
    p_dup = {"name": "DeltaNetAgain", "motivation": None, "code": DELTANET}
    good = proposal("WideKeys", "Widen the key projection to 1.5x so the delta-rule memory stores more "
                    "associations with less interference between keys.", expand_k=1.5)
    resp = _responder(None, good)
    with FakeLLMServer(resp) as srv:
        lab = make_lab(tmp_path / "lab")
        p_dup["motivation"] = lab.store.get("0000").motivation  # a near-duplicate of the seed
        resp.queues["researcher"][0] = p_dup
        bad = dict(good, code=broken(good["code"]))
        resp.queues["researcher"][1] = bad
        resp.add("debugger", {"explanation": "still trying", "code": bad["code"] + "\n# renamed a variable\n"},
                 {"explanation": "removed the slice that dropped the last position", "code": good["code"]})
        ex = FakeExecutor()
        loop = Loop(lab, llm=f"ollama:scripted@{srv.url}", executor=ex, experiments=1, backoff_s=0,
                    baselines=("deltanet",))
        events = []
        loop.subscribe(events.append)
        summary = loop.run()
    assert summary.state == "finished" and len(summary.experiments) == 1
    exp_id = summary.experiments[0]["id"]
    rec = lab.store.get(exp_id)
    assert rec.status == "accepted" and rec.name == "WideKeys" and rec.researcher == "ollama:scripted"
    # the measured seed was committed first
    assert lab.store.get("0001").extra["measures"] == "0000" and lab.store.get("0001").metrics["status"] == "ok"
    # its judge step is counted with its call (status and the report agree on steps and calls)
    assert [(s["role"], s["by"]) for s in lab.store.get("0001").extra["agent_steps"]] == [("judge", "llm")]
    assert [t["role"] for t in lab.store.get("0001").transcript] == ["judge"]
    # near-duplicate sent back with its neighbour
    rej = rec.extra["novelty_rejections"]
    assert len(rej) == 1 and rej[0]["neighbour"] in ("0000", "0001") and rej[0]["similarity"] >= 0.9
    research_reqs = [r for role, r in resp.seen if role == "researcher"]
    assert "too close" in research_reqs[1]["messages"][-1]["content"]
    # the prompt carried the parent (code, motivation, metrics, analysis), baselines and cognition
    first = research_reqs[0]["messages"][-1]["content"]
    for part in ("## Parent", "class Mixer", "Results: status=ok", "## Parent's analysis",
                 "## Reference baselines", "## Literature notes"):
        assert part in first, part
    assert rec.cognition and all(isinstance(c, str) for c in rec.cognition)
    # the debugger repaired it in round 2; every round is in the record
    rounds = rec.extra["debug_rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and [r["passed"] for r in rounds] == [False, True]
    assert rec.code == good["code"] and "[:, :-1]" not in rec.code
    # the seed baseline on 3 seeds; the candidate on rung 0, then 2 more seeds (the top has < 5 designs)
    assert len(ex.checked) == 3 and len(ex.evaluated) == 6
    # analysis, judge, fitness
    assert "## Explanation" in rec.analysis and rec.problem == ANALYSIS["problem"]
    assert rec.fitness_components["measured"]["s_judge"] and rec.fitness_components["judge"]["performance"] == 6
    assert rec.fitness == pytest.approx(compute_fitness(rec.metrics, loop.seed_baseline(), JUDGE)[0])
    # every call is kept: role, model, prompt, reply, duration, tokens
    roles = [t["role"] for t in rec.transcript]
    assert roles == ["researcher", "researcher", "debugger", "debugger", "analyst", "judge"]
    assert all(t["tokens_in"] and t["prompt"] and t["reply"] for t in rec.transcript)
    # events streamed and logged
    kinds = {type(e).__name__ for e in events}
    assert {"ExperimentStarted", "StageChanged", "AgentMessage", "LogLine", "MetricPoint",
            "ExperimentFinished", "LoopStateChanged"} <= kinds
    assert any(isinstance(e, AgentMessage) and e.message == "delta" for e in events)
    logged = read_events(lab.events_path)
    assert any(isinstance(e, ExperimentFinished) and e.exp_id == exp_id for e in logged)
    assert not any(isinstance(e, AgentMessage) and e.message == "delta" for e in logged)
    stages = [e.stage for e in events if isinstance(e, StageChanged) and e.exp_id == exp_id and e.status == "started"]
    for s in ("sample", "research", "novelty", "check", "debug", "evaluate", "analyse", "judge", "score", "commit"):
        assert s in stages
    assert set(rec.timings) >= {"sample", "research", "novelty", "check", "evaluate", "analyse", "judge", "score"}


def test_malformed_researcher_falls_back_to_builtin_for_the_step(tmp_path):
    resp = _responder("not json at all", {"name": "x", "motivation": "m", "code": "def broken(:"})
    with FakeLLMServer(resp) as srv:
        lab = make_lab(tmp_path / "lab")
        loop = Loop(lab, llm=f"ollama:scripted@{srv.url}", executor=FakeExecutor(), experiments=1,
                    backoff_s=0, baselines=("deltanet",), fallback_researcher=StandInResearcher())
        summary = loop.run()
    rec = lab.store.get(summary.experiments[0]["id"])
    # the experiment is not spent: the built-in researcher answered this step
    assert rec.status == "accepted" and rec.name != "research-failed" and rec.researcher in ("builtin", "standin")
    model_calls = [t for t in rec.transcript if t["role"] == "researcher" and t["model"] == "ollama:scripted"]
    assert [t["ok"] for t in model_calls] == [False, False]  # the model's attempts are kept
    assert model_calls[0]["reply"] == "not json at all" and "does not parse" in model_calls[1]["error"]
    steps = [s for s in rec.extra["agent_steps"] if s["role"] == "researcher"]
    assert [s["by"] for s in steps] == ["fallback"] and "unusable" in steps[0]["reason"]
    assert summary.agents["researcher"]["fallback"] == 1 and summary.agents["researcher"]["llm"] == 0
    assert summary.agents["analyst"]["llm"] == 1  # the analyst's reply was usable
    # `status` says it too, from the archive
    import typer
    from typer.testing import CliRunner

    from asiarch_tui import cli_archive

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    cli_archive.register(app)
    lab.close()
    res = CliRunner().invoke(app, ["status", "--lab", str(tmp_path / "lab")])
    out = " ".join(res.output.split())
    assert res.exit_code == 0, out
    assert "researcher ollama:scripted: 0 LLM / 1 built-in" in out and "analyst ollama:scripted: 1 LLM / 0 built-in" in out


def test_unreachable_llm_falls_back_and_loop_survives(tmp_path):
    with FakeLLMServer() as srv:
        url = srv.url  # stopped at once: nothing listens there any more
    lab = make_lab(tmp_path / "lab")
    loop = Loop(lab, llm=f"ollama:scripted@{url}", executor=FakeExecutor(), experiments=2, backoff_s=0,
                retries=1, baselines=("deltanet",), fallback_researcher=StandInResearcher(), timeout_s=2)
    events = []
    loop.subscribe(events.append)
    summary = loop.run()
    assert summary.state == "finished" and len(summary.experiments) == 2
    recs = [lab.store.get(e["id"]) for e in summary.experiments]
    assert all(r.status == "accepted" and r.researcher in ("standin", "builtin") for r in recs)
    # found at the start: one clear warning, not three per role per experiment
    warnings = [e.message for e in events if isinstance(e, Warning)]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "researcher, analyst, judge, debugger" in warnings[0]
    # every model step is counted as answered by the built-in fallback
    for role in ("researcher", "analyst", "judge"):
        assert summary.agents[role]["fallback"] == 2 and summary.agents[role]["llm"] == 0
    assert all(s["by"] == "fallback" for s in recs[0].extra["agent_steps"])


def _wait_for(events, pred, timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for e in list(events):
            if pred(e):
                return e
        time.sleep(0.02)
    raise AssertionError("event did not come")


def test_supervised_approve_reject_edit_fork_pause_via_commands(tmp_path):
    lab = make_lab(tmp_path / "lab")
    # this test is about the commands: the stand-in's templated motivations (similarity 0.95-0.98
    # under the hash embedder) must not run out of novel proposals before the 4th approval
    lab.config.loop.novelty_threshold = 0.995
    ex = FakeExecutor()
    loop = Loop(lab, llm="builtin", researcher=StandInResearcher(), executor=ex, mode="supervised",
                experiments=4, baselines=("deltanet",))
    events: list = []
    lock = threading.Lock()

    def collect(e):
        with lock:
            events.append(e)

    loop.subscribe(collect)
    loop.start()
    # 1st proposal: reject
    a1 = _wait_for(events, lambda e: isinstance(e, ApprovalRequested))
    assert loop.state == "waiting_approval"
    loop.reject("not interesting")
    f1 = _wait_for(events, lambda e: isinstance(e, ExperimentFinished) and e.exp_id == a1.exp_id)
    assert f1.status == "rejected"
    # 2nd: approve, and fork the next one from the seed
    a2 = _wait_for(events, lambda e: isinstance(e, ApprovalRequested) and e.exp_id != a1.exp_id)
    loop.fork("0000")
    loop.approve()
    f2 = _wait_for(events, lambda e: isinstance(e, ExperimentFinished) and e.exp_id == a2.exp_id)
    assert f2.status == "accepted"
    # 3rd: its parent is the fork; edit the code (re-checked, then evaluated)
    a3 = _wait_for(events, lambda e: isinstance(e, ApprovalRequested) and e.exp_id not in (a1.exp_id, a2.exp_id))
    edited = a3.code.replace("chunk_size: int | None = None", "chunk_size: int | None = 32") + "\n# edited\n"
    assert edited != a3.code + "\n# edited\n"  # the edit changed the code
    loop.pause()
    _wait_for(events, lambda e: isinstance(e, LoopStateChanged) and e.state == "paused")
    loop.edit(edited)
    time.sleep(0.2)
    assert loop.state == "paused"  # nothing moves while paused
    loop.resume()
    f3 = _wait_for(events, lambda e: isinstance(e, ExperimentFinished) and e.exp_id == a3.exp_id)
    assert f3.status == "accepted"
    # 4th: stop while it waits: the loop ends, the experiment stays in flight
    a4 = _wait_for(events, lambda e: isinstance(e, ApprovalRequested) and e.exp_id not in
                   (a1.exp_id, a2.exp_id, a3.exp_id))
    loop.stop()
    assert loop.join(30)
    r1, r2, r3 = (lab.store.get(a.exp_id) for a in (a1, a2, a3))
    assert r1.status == "rejected" and r1.extra["failure"] == "not interesting"
    assert r3.parent == "0000" and r3.code == edited and r3.extra["edited_by_user"]
    assert ex.evaluated[-1] == edited
    flight = loop.in_flight()
    assert a4.exp_id not in lab.store and flight["id"] == a4.exp_id
    assert loop.summary.state == "stopped"
    # a new loop redoes the experiment in flight with the same id, parent and proposal
    loop2 = Loop(lab, llm="builtin", researcher=StandInResearcher(), executor=ex, experiments=1,
                 baselines=("deltanet",))
    s2 = loop2.run()
    assert s2.experiments[0]["id"] == a4.exp_id
    r4 = lab.store.get(a4.exp_id)
    assert r4.code == a4.code and r4.parent == flight["parent"] and r4.references == flight["references"]
    assert len(lab.store.ids()) == len(set(lab.store.ids()))
    assert loop2.in_flight() is None


@pytest.mark.parametrize("flavour", ["openai", "ollama"])
def test_openai_backend_failures_fed_back_and_training_error_repaired(tmp_path, flavour):
    """An OpenAI-compatible server (also Ollama's own ``/v1`` mode): unusable replies, a
    correction round, a training error repaired by the debugger."""
    from tests.loop_helpers import EvalFailingExecutor

    good = proposal("Conv2", "Use a causal convolution of width 2 on q, k and v.", conv_size=2)
    failing = dict(good, code=good["code"] + "\n# EVALFAIL\n")
    resp = _responder("garbage", "more garbage", failing)
    resp.add("debugger", {"explanation": "fixed the size mismatch in the output projection", "code": good["code"]})
    with FakeLLMServer(resp, flavour=flavour) as srv:
        lab = make_lab(tmp_path / "lab")
        ex = EvalFailingExecutor()
        loop = Loop(lab, llm=f"openai:scripted@{srv.url}/v1", executor=ex, experiments=2, backoff_s=0,
                    baselines=("deltanet",))
        summary = loop.run()
    first, second = (lab.store.get(e["id"]) for e in summary.experiments)
    # two unusable replies: the built-in researcher answered the first step (the budget is kept)
    assert first.status == "accepted" and first.researcher == "builtin"
    assert second.status == "accepted" and second.researcher.startswith("openai:scripted")
    assert [t["reply"] for t in first.transcript if t["role"] == "researcher" and t["model"] != "builtin"] == [
        "garbage", "more garbage"]
    # the correction round ran at the correction temperature, with a reply limit
    bodies = [r for role, r in resp.seen if role == "researcher"]
    assert bodies[0]["temperature"] == 0.7 and bodies[1]["temperature"] == 0.2
    assert all(b["max_tokens"] > 0 for b in bodies)
    # a training error went to the debugger; the repair was re-checked and re-evaluated
    rounds = second.extra["debug_rounds"]
    assert len(rounds) == 1 and rounds[0]["stage"] == "evaluate" and rounds[0]["passed"] is True
    assert "size mismatch" in rounds[0]["error"]
    assert ex.checked[-1] == good["code"] and ex.evaluated[-1] == good["code"]
    assert second.code == good["code"] and second.metrics["status"] == "ok"


def test_in_flight_state_of_a_committed_experiment_is_not_redone(tmp_path):
    import json

    lab = make_lab(tmp_path / "lab")
    loop = Loop(lab, llm="builtin", researcher=StandInResearcher(), executor=FakeExecutor(), experiments=1,
                baselines=("deltanet",))
    # killed after the archive commit but before the run folder was cleaned
    run = lab.path / "runs" / "0000"
    run.mkdir(parents=True, exist_ok=True)
    (run / "state.json").write_text(json.dumps({"id": "0000", "parent": None}))
    assert loop.in_flight() is None and not (run / "state.json").exists()
    summary = loop.run()
    assert [e["id"] for e in summary.experiments] == ["0002"] and lab.store.ids() == ["0000", "0001", "0002"]


def test_a_design_found_non_causal_after_training_is_rejected_and_never_ranked(tmp_path):
    """The evaluation harness's post-training causality check (metrics status ``rejected``) makes
    the experiment ``rejected``: its reason names the model, position and change, metrics.json
    keeps the check's record, no fitness, no debugger round, not in the candidate set."""
    import json
    from pathlib import Path

    from agents.engineer import StepResult

    why = ("non-causal (found after training): the trained mqar model (held-out probe examples, L=32, batch 16, "
           "eval mode, grad off, float32): replacing tokens 5.. moved the logits at position 4, change 0.73 > 0.0001")

    baselines: list = []
    design_seeds: list = []

    class Rejecting(FakeExecutor):
        def evaluate(self, path, run_dir, seed, baseline, on_line=None, trusted=False):
            baselines.append(baseline)
            if Path(path).read_text() != DELTANET:
                design_seeds.append(seed)
            res = super().evaluate(path, run_dir, seed, baseline, on_line)
            if Path(path).read_text() == DELTANET:  # the seed's measurement
                return res
            after = {"checked": True, "models": ["mqar"], "max_change": 0.73, "tol": 1e-4, "violation": why}
            m = dict(res.metrics, status="rejected", stop_reason=why, partial=True, causality_after_training=after)
            return StepResult(False, [], m, error=why)

    lab = make_lab(tmp_path / "lab")
    ex = Rejecting()
    summary = Loop(lab, llm="builtin", researcher=StandInResearcher(), executor=ex, experiments=1,
                   baselines=("deltanet",)).run()
    rec = lab.store.get(summary.experiments[-1]["id"])
    assert rec.status == "rejected" and rec.fitness is None and rec.extra["failure"] == why
    # evaluated once per seed (its side seeds may run beside the first): no repair, no re-run
    assert rec.extra["debug_rounds"] == [] and design_seeds and len(design_seeds) == len(set(design_seeds))
    stored = json.loads(lab.store.read_file(rec.id, "metrics.json"))
    assert stored["causality_after_training"]["violation"] == why and stored["status"] == "rejected"
    assert rec.id not in [d["id"] for d in lab.candidates.top()]
    # the design was evaluated against the seed's metrics with the leak monitor's references (only
    # the seed is measured here: no softmax baseline for the probe rule, the default loss rule)
    ref = baselines[-1]["leak_reference"]
    assert baselines[-1]["status"] == "ok" and ref["probe"] is None and ref["loss"]["tolerance"] == 0.10


def test_a_further_seed_found_non_causal_after_training_rejects_the_design(tmp_path):
    """Rung 0 passes, a further seed's evaluation is rejected by the harness: the design is
    rejected (its trained model reads the future on that seed), with the seed in the reason."""
    from pathlib import Path

    from agents.engineer import StepResult

    why = "non-causal (found after training): the trained mqar model (...): replacing tokens 3.. moved the logits"

    class LateRejecting(FakeExecutor):
        def evaluate(self, path, run_dir, seed, baseline, on_line=None, trusted=False):
            res = super().evaluate(path, run_dir, seed, baseline, on_line)
            if Path(path).read_text() == DELTANET or seed == 0:
                return res
            m = dict(res.metrics, status="rejected", stop_reason=why, partial=True)
            return StepResult(False, [], m, error=why)

    lab = make_lab(tmp_path / "lab")
    summary = Loop(lab, llm="builtin", researcher=StandInResearcher(), executor=LateRejecting(), experiments=1,
                   baselines=("deltanet",), seed=0).run()
    rec = lab.store.get(summary.experiments[-1]["id"])
    assert rec.status == "rejected" and rec.fitness is None, (rec.status, rec.extra.get("failure"))
    assert rec.extra["failure"].startswith("seed ") and why in rec.extra["failure"]
    assert rec.id not in [d["id"] for d in lab.candidates.top()]


def test_mode_switch_and_stop_after_experiment(tmp_path):
    lab = make_lab(tmp_path / "lab")
    loop = Loop(lab, llm="builtin", researcher=StandInResearcher(), executor=FakeExecutor(eval_delay_s=0.3),
                mode="supervised", experiments=5, baselines=("deltanet",))
    events: list = []
    loop.subscribe(events.append)
    loop.start()
    a1 = _wait_for(events, lambda e: isinstance(e, ApprovalRequested))
    loop.set_mode("autonomous")
    loop.approve()
    _wait_for(events, lambda e: isinstance(e, ExperimentFinished) and e.exp_id == a1.exp_id)
    # autonomous now: the next experiment asks nobody; stop once it is committed
    _wait_for(events, lambda e: isinstance(e, StageChanged) and e.stage == "evaluate" and e.exp_id != a1.exp_id
              and e.exp_id is not None)
    loop.stop(after="experiment")
    assert loop.join(30)
    finished = [e for e in events if isinstance(e, ExperimentFinished) and e.reason != "seed measured"]
    assert len(finished) == 2 and all(f.status == "accepted" for f in finished)
    assert sum(isinstance(e, ApprovalRequested) for e in events) == 1
    assert loop.summary.state == "stopped" and loop.in_flight() is None


def test_cli_run_rejects_bad_flags_with_one_paragraph(tmp_path):
    from typer.testing import CliRunner

    from asiarch_tui.cli import app

    runner = CliRunner()
    lab = tmp_path / "lab"
    from cli_helpers import cli_text

    for args, needle in ((["run", str(lab)], "--headless"),
                         (["run", str(lab), "--headless", "--llm", "gpt4"], "'gpt4' is not understood"),
                         (["run", str(lab), "--headless", "--mode", "sometimes"],
                          "'sometimes' is not one of 'autonomous', 'supervised'"),
                         (["run", str(lab), "--headless", "--scale", "huge"],
                          "'huge' is not one of 'demo', 'probe', 'explore', 'verify-mini', 'verify'"),
                         (["run", str(lab), "--headless", "--baselines", "gla,mamba"], "unknown reference mixer(s) mamba"),
                         (["run", str(lab), "--headless", "--mode", "supervised"], "at a terminal")):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in cli_text(r) and "Traceback" not in r.output
    assert not lab.exists()


def test_a_researcher_bug_fails_the_step_not_the_loop(tmp_path):
    class Buggy:
        spec = "buggy"
        calls = 0

        def propose(self, ctx):
            Buggy.calls += 1
            if Buggy.calls == 1:
                raise RuntimeError("index out of range in my design space")
            return StandInResearcher().propose(ctx)

    lab = make_lab(tmp_path / "lab")
    loop = Loop(lab, llm="builtin", researcher=Buggy(), executor=FakeExecutor(), experiments=2,
                baselines=("deltanet",))
    summary = loop.run()
    assert [e["status"] for e in summary.experiments] == ["failed", "accepted"]
    rec = lab.store.get(summary.experiments[0]["id"])
    assert "RuntimeError" in rec.extra["failure"] and "index out of range" in rec.extra["traceback"]


def test_ollama_host_from_config_or_environment(tmp_path, monkeypatch):
    lab = make_lab(tmp_path / "lab")
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    loop = Loop(lab, llm="ollama:m", executor=FakeExecutor())
    assert loop.researcher.backend.host == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    loop = Loop(lab, llm="ollama:m", executor=FakeExecutor())
    assert loop.researcher.backend.host == "http://127.0.0.1:9"
    lab.config.llm.ollama_host = "http://127.0.0.1:7"
    lab.config.llm.judge = "ollama"
    loop = Loop(lab, executor=FakeExecutor())
    assert loop.judge_agent.backend.host == "http://127.0.0.1:7"
    assert loop.role_specs["researcher"].backend == "builtin"


def test_quasi_ablation_names_the_one_component_that_differs():
    from archive.record import ExperimentRecord

    from agents.analyst import BuiltinAnalyst, components_of, quasi_ablation

    def rec(i, code, probe_mean, fitness):
        return ExperimentRecord(id=i, name=f"e{i}", parent="0001", code=code, fitness=fitness,
                                metrics={"status": "ok", "probe_mean": probe_mean,
                                         "probes": {"mqar": probe_mean, "noisy_recall": probe_mean / 2}})

    a = rec("0003", proposal("A", "m", conv_size=2)["code"], 0.6, 0.7)
    b = rec("0004", DELTANET, 0.4, 0.5)  # differs from a in conv_size only
    c = rec("0005", proposal("C", "m", conv_size=3, expand_v=0.5)["code"], 0.5, 0.6)  # two differences
    assert components_of(a)["conv_size"] == 2 and components_of(b)["conv_size"] == 4
    abl = quasi_ablation(a, [a, b, c])
    assert len(abl) == 1 and abl[0]["sibling"] == "0004" and abl[0]["component"] == "conv_size"
    assert abl[0]["delta_probe_mean"] == pytest.approx(0.2) and abl[0]["delta_fitness"] == pytest.approx(0.2)
    parent = rec("0001", DELTANET, 0.4, 0.5)
    an = BuiltinAnalyst().analyse(a, parent, [a, b, c], {"deltanet": {"probe_mean": 0.4}})
    assert "conv_size" in an.explanation and "0004" in an.explanation
    assert "conv_size 4 → 2" in an.design_evaluation
    assert "noisy_recall" in an.problem and "\n" not in an.problem
    for head in ("## Design evaluation", "## Results", "## Expectation vs reality", "## Explanation",
                 "## Insights", "## Problem"):
        assert head in an.text()


def test_concurrent_experiments_commit_once_each_and_overlap(tmp_path):
    lab = make_lab(tmp_path / "lab")
    ex = FakeExecutor(eval_delay_s=0.5)
    loop = Loop(lab, llm="builtin", researcher=StandInResearcher(), executor=ex, experiments=4,
                baselines=("deltanet",), concurrency=2)
    events = []
    loop.subscribe(events.append)
    summary = loop.run()
    assert summary.state == "finished"
    ids = [e["id"] for e in summary.experiments]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert sorted(lab.store.ids()) == ["0000", "0001"] + sorted(ids)
    for i in ids:
        rec = lab.store.get(i)
        assert rec.parent in lab.store and lab.store.entry(i).parent_commit == lab.store.commit_of(rec.parent)
    spans = sorted(ex.spans[1:])  # without the baseline
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "two evaluations should overlap"
    finished = [e.exp_id for e in events if isinstance(e, ExperimentFinished) and e.reason != "seed measured"]
    assert sorted(finished) == sorted(ids)


def test_concurrent_supervised_one_approval_at_a_time_and_stop(tmp_path):
    lab = make_lab(tmp_path / "lab")
    loop = Loop(lab, llm="builtin", researcher=StandInResearcher(), executor=FakeExecutor(eval_delay_s=0.2),
                mode="supervised", experiments=6, baselines=("deltanet",), concurrency=2)
    events: list = []
    loop.subscribe(events.append)
    loop.start()
    a1 = _wait_for(events, lambda e: isinstance(e, ApprovalRequested))
    time.sleep(0.5)  # the other worker has its proposal checked by now, but must wait its turn
    assert sum(isinstance(e, ApprovalRequested) for e in events) == 1
    loop.approve()
    a2 = _wait_for(events, lambda e: isinstance(e, ApprovalRequested) and e.exp_id != a1.exp_id)
    loop.reject("no")
    _wait_for(events, lambda e: isinstance(e, ExperimentFinished) and e.exp_id == a2.exp_id)
    loop.stop()
    assert loop.join(30)
    assert loop.summary.state == "stopped"
    assert lab.store.get(a2.exp_id).status == "rejected"
    # nothing committed twice; what was in flight is redone later
    ids = lab.store.ids()
    assert len(ids) == len(set(ids))


def test_headless_supervised_asks_at_the_terminal():
    from agents.events import ApprovalRequested
    from asiarch_tui.cli_run import ask_approval

    class FakeLoop:
        def __init__(self):
            self.calls = []

        def approve(self, code=None):
            self.calls.append(("approve", code))

        def reject(self, reason=""):
            self.calls.append(("reject", reason))

    ev = ApprovalRequested(exp_id="0004", name="X", motivation="why", code="class Mixer: ...",
                           checks=[{"name": "causality", "passed": True, "value": 0.0, "reason": ""}])
    answers = iter(["maybe", "r", "the decay is not data dependent"])
    loop = FakeLoop()
    assert ask_approval(loop, ev, ask=lambda text, **kw: next(answers)) == "reject"
    assert loop.calls == [("reject", "the decay is not data dependent")]
    loop = FakeLoop()
    assert ask_approval(loop, ev, ask=lambda text, **kw: "a") == "approve"
    assert loop.calls == [("approve", None)]


def test_headless_edit_goes_through_the_users_editor(tmp_path, monkeypatch):
    """'e' opens $EDITOR on the code (click.edit); what the editor saves is what is approved."""
    import stat

    from agents.events import ApprovalRequested
    from asiarch_tui.cli_run import ask_approval

    editor = tmp_path / "ed.sh"  # an 'editor' that rewrites the file it is given
    editor.write_text('#!/bin/sh\nsed -i "s/conv_size = 4/conv_size = 3/" "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("EDITOR", str(editor))
    monkeypatch.delenv("VISUAL", raising=False)

    class FakeLoop:
        calls: list = []

        def approve(self, code=None):
            self.calls.append(("approve", code))

    ev = ApprovalRequested(exp_id="0004", name="X", motivation="why", code="conv_size = 4\n", checks=[])
    loop = FakeLoop()
    assert ask_approval(loop, ev, ask=lambda text, **kw: "e") == "edit"
    assert loop.calls == [("approve", "conv_size = 3\n")]
