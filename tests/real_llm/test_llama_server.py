"""Against a real llama.cpp server (llama-cpp-python serving SmolLM2-135M): the backend scenarios
(recorded as cassettes for the default suite with ``make test-llm RECORD=1``); the loop for 2
experiments per role configuration; and the server killed mid-run. Each test gets its own server
process and a hard timeout (see conftest). Opt-in: ``make test-llm``."""

from __future__ import annotations

import contextlib
import threading

import pytest

from agents.events import ExperimentFinished, Warning
from agents.llm import OpenAIBackend
from agents.loop import Loop
from tests import llm_scenarios as sc
from tests.loop_helpers import FakeExecutor, make_lab
from tests.real_llm.conftest import RECORD, run_loop


@pytest.mark.timeout(600, method="signal")
@pytest.mark.parametrize("name", list(sc.SCENARIOS))
def test_scenario(llama_server, name):
    """Each scenario live; recorded into its cassette only with ``RECORD=1``."""
    if RECORD:
        sc.CASSETTES.mkdir(exist_ok=True)
        ctx = sc.vcr_config(record=True).use_cassette(str(sc.cassette(name)))
    else:
        ctx = contextlib.nullcontext()
    before = sc.cassette(name).read_bytes() if sc.cassette(name).exists() else None
    with ctx:
        be = OpenAIBackend(sc.MODEL, llama_server.url, timeout_s=300)
        out = sc.SCENARIOS[name](be)
    sc.check(name, out)
    if not RECORD:
        after = sc.cassette(name).read_bytes() if sc.cassette(name).exists() else None
        assert after == before, "a live run must not touch the cassettes"


def _lab(tmp_path, roles: tuple[str, ...], url: str, call_timeout_s: float = 240.0):
    lab = make_lab(tmp_path / "lab")
    c = lab.config.llm
    for role in roles:
        setattr(c, role, "openai")
        setattr(c, f"{role}_model", sc.MODEL)
    c.openai_base_url = url
    c.context_length = sc.N_CTX
    # small replies keep a CPU-served 135M model to tens of seconds per call
    c.researcher_max_tokens, c.debugger_max_tokens, c.analyst_max_tokens, c.judge_max_tokens = 512, 512, 384, 96
    c.call_timeout_s = call_timeout_s
    return lab


CONFIGS = {"all": ("researcher", "analyst", "judge", "debugger"), "researcher": ("researcher",),
           "analyst+judge": ("analyst", "judge")}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_loop_two_experiments(llama_server, tmp_path, config):
    roles = CONFIGS[config]
    lab = _lab(tmp_path, roles, llama_server.url)
    loop = Loop(lab, executor=FakeExecutor(), experiments=2, baselines=("deltanet",), backoff_s=0.5)
    header = loop.negotiate_llms()
    for role in roles:
        line = next(x for x in header if x.startswith(role))
        assert "JSON via json_object+schema" in line and f"ctx {sc.N_CTX}" in line, header
    summary = run_loop(loop)
    assert summary.state == "finished" and len(summary.experiments) == 2
    for e in summary.experiments:
        rec = lab.store.get(e["id"])
        assert rec.name != "research-failed"  # an unusable reply never spends the experiment
        model_calls = [t for t in rec.transcript if t["model"].startswith("openai:")]
        assert model_calls and any(t["reply"] for t in model_calls)  # the model's real replies are kept
        assert all(t["duration_s"] > 0 for t in model_calls)
    for role in roles:
        t = summary.agents.get(role)
        if t is None:  # a role with no step: only the debugger (no check failed)
            assert role == "debugger", summary.agents
            print(f"{config}/{role}: no step (every check passed)")
            continue
        steps = t["llm"] + t["fallback"]
        assert steps >= (2 if role != "debugger" else 0)
        assert t["calls"] >= (1 if steps else 0)  # an open circuit answers without a call
        print(f"{config}/{role}: {t['llm']}/{steps} steps by the model, {t['calls']} calls, "
              f"{t['call_seconds'] / max(1, t['calls']):.1f} s per call (max {t['max_call_s']:.1f} s)")


def test_server_killed_mid_run(llama_server, tmp_path):
    srv = llama_server
    lab = _lab(tmp_path, CONFIGS["all"], srv.url, call_timeout_s=120.0)
    lab.config.llm.researcher_max_tokens = lab.config.llm.analyst_max_tokens = 128
    loop = Loop(lab, executor=FakeExecutor(), experiments=3, baselines=("deltanet",), backoff_s=0.2)
    events: list = []
    first_done = threading.Event()

    def on(ev):
        events.append(ev)
        if isinstance(ev, ExperimentFinished) and ev.reason != "seed measured":
            first_done.set()

    loop.subscribe(on)
    loop.start()
    try:
        if not first_done.wait(900):
            pytest.fail("the first experiment did not finish within 900 s")
        srv.kill()
        assert not srv.alive()
        if not loop.join(900):
            pytest.fail("the loop did not finish within 900 s of the server's death")
    finally:
        if not loop.join(0):
            loop.stop()
            loop.join(60)
    summary = loop.summary
    assert summary.state == "finished" and len(summary.experiments) == 3
    last = lab.store.get(summary.experiments[-1]["id"])
    assert last.name != "research-failed"
    assert all(s["by"] == "fallback" for s in last.extra["agent_steps"] if s["role"] in ("researcher", "analyst", "judge"))
    # one clear warning per role when its circuit opens, not one per call
    opened = [e.message for e in events if isinstance(e, Warning) and "consecutive failures" in e.message]
    assert len(opened) <= 4 and len({m.split(":")[0] for m in opened}) == len(opened)
    assert summary.agents["researcher"]["llm"] + summary.agents["researcher"]["fallback"] == 3
