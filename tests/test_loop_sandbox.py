"""The loop for real: sandboxed check and evaluation, the scripted LLM through the real ``ollama``
client (chat and /api/embed), the CLI, and resume after kill -9 mid-training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.events import ExperimentStarted, StageChanged, read_events
from agents.loop import Loop
from tests.fake_llm_server import FakeLLMServer, ScriptedResponder
from tests.loop_helpers import ANALYSIS, JUDGE, broken, make_lab, proposal, tiny_scale

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _defaults(role, req):
    return {"analyst": ANALYSIS, "judge": JUDGE}.get(role, {})


def test_full_cycle_in_the_sandbox(tmp_path):
    resp = ScriptedResponder(default=_defaults)
    with FakeLLMServer(resp) as srv:
        lab = make_lab(tmp_path / "lab", ollama_host=srv.url)  # novelty embeddings via /api/embed
        seed = lab.store.get("0000")
        good = proposal("NarrowValues", "Halve the value width of the delta-rule memory to test whether "
                        "recall needs the full state; fewer parameters, faster steps.", expand_v=0.5)
        resp.add("researcher", {"name": "SeedAgain", "motivation": seed.motivation, "code": seed.code},
                 dict(good, code=broken(good["code"])))
        resp.add("debugger",
                 {"explanation": "first try", "code": broken(good["code"]) + "\n# first try\n"},
                 {"explanation": "the output dropped the last position; return all of it", "code": good["code"]})
        loop = Loop(lab, llm=f"ollama:scripted@{srv.url}", scale=tiny_scale(), experiments=1, backoff_s=0,
                    baselines=("deltanet",))
        events = []
        loop.subscribe(events.append)
        summary = loop.run()
        embeds = [p for p, _ in srv.requests if p == "/api/embed"]
    assert any(type(e).__name__ == "MetricPoint" and e.name == "mqar_loss" for e in events)
    assert summary.state == "finished"
    rec = lab.store.get(summary.experiments[0]["id"])
    assert rec.status == "accepted", rec.extra
    assert rec.extra["novelty_rejections"][0]["neighbour"] in ("0000", "0001")
    rounds = rec.extra["debug_rounds"]
    assert [r["passed"] for r in rounds] == [False, True] and all(r["stage"] == "check" for r in rounds)
    assert "forward_backward" in rounds[0]["error"] or "shape" in rounds[0]["error"]
    assert {c["name"] for c in rec.checks} >= {"contract", "imports", "build", "causality", "subquadratic"}
    assert all(c["passed"] for c in rec.checks)
    m = rec.metrics
    assert m["status"] == "ok" and 0.0 <= m["probe_mean"] <= 1.0 and m["mixer_params"] > 0
    assert rec.fitness is not None and rec.fitness_components["measured"]["s_score"]
    assert embeds, "the novelty index should have embedded through /api/embed"
    baselines = json.loads(next((lab.path / "baselines").glob("*.json")).read_text())
    assert baselines["deltanet"]["status"] == "ok"
    assert lab.store.get("0001").metrics == baselines["deltanet"]


def _wait_event(path: Path, pred, timeout: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if any(pred(e) for e in read_events(path)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no such event in {path} after {timeout} s")


def test_cli_run_resumes_after_kill_9_mid_training(tmp_path):
    resp = ScriptedResponder(default=_defaults)
    resp.add("researcher", proposal("ShortConv3", "Use a causal convolution of width 3 instead of 4 before "
                                    "the delta-rule memory is written.", conv_size=3))
    lab_dir = tmp_path / "lab"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with FakeLLMServer(resp) as srv:
        make_lab(lab_dir).close()
        cmd = [sys.executable, "-m", "asiarch_tui.cli", "run", str(lab_dir), "--headless", "--experiments", "1",
               "--llm", f"ollama:scripted@{srv.url}", "--scale-factor", "0.02", "--baselines", "deltanet"]
        log1 = open(tmp_path / "run1.log", "w")
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT)
        try:
            _wait_event(lab_dir / "events.jsonl", lambda e: isinstance(e, StageChanged) and e.stage == "evaluate"
                        and e.status == "started" and e.exp_id == "0002", timeout=240)
            time.sleep(1.0)  # mid-training
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        finally:
            if p.poll() is None:
                p.kill()
            log1.close()
        assert p.returncode == -signal.SIGKILL
        n_research = sum(1 for role, _ in resp.seen if role == "researcher")
        assert n_research == 1
        from archive.lab import Lab

        lab = Lab.open(lab_dir)
        assert "0002" not in lab.store and (lab_dir / "runs" / "0002" / "state.json").exists()
        lab.close()
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "0002" in r.stdout and "accepted" in r.stdout
        assert sum(1 for role, _ in resp.seen if role == "researcher") == 1  # the saved proposal was redone
    lab = Lab.open(lab_dir)
    ids = lab.store.ids()
    assert sorted(ids) == ["0000", "0001", "0002"]
    rec = lab.store.get("0002")
    assert rec.status == "accepted" and rec.name == "ShortConv3" and "conv_size: int = 3" in rec.code
    assert rec.extra["redone_after_crash"] and rec.transcript[0]["role"] == "researcher"  # kept across the kill
    starts = [e for e in read_events(lab_dir / "events.jsonl") if isinstance(e, ExperimentStarted) and e.exp_id == "0002"]
    assert [e.redo for e in starts] == [False, True]
    assert not (lab_dir / "runs" / "0002" / "state.json").exists()
    lab.close()
