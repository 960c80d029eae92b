"""The console's LLM status, driven with Textual's Pilot over the real loop talking HTTP to the
scripted OpenAI-compatible server: the negotiated form and context appear in the status bar, each
role's steps are counted as the model's or the built-in fallback's, and a dead server is shown."""

from __future__ import annotations

import asyncio

from agents import events as ev
from agents.loop import Loop
from asiarch_tui.app import LoopEvent, ResearchConsole
from asiarch_tui.panels import StatusBar
from tests.fake_llm_server import FakeLLMServer, Reply, ScriptedResponder
from tests.loop_helpers import FakeExecutor, make_lab
from tests.test_tui import wait_for as _wait


def _status(app) -> str:
    return app.query_one(StatusBar).render_status().plain


def test_status_bar_shows_negotiation_and_counts_fallback_steps(tmp_path):
    # every role's reply is an empty object: unusable, so each step falls back to the built-in agent
    responder = ScriptedResponder(default=lambda role, req: Reply(content="{}"))
    with FakeLLMServer(responder, formats=("json_object+schema", "json_object", "plain"), refuse_status=500,
                       context_length=8192, props=True) as srv:
        lab = make_lab(tmp_path / "lab")
        loop = Loop(lab, llm=f"openai:scripted@{srv.url}/v1", executor=FakeExecutor(), experiments=1,
                    baselines=("deltanet",), backoff_s=0)

        async def go():
            app = ResearchConsole(lab, loop, clock=False)
            async with app.run_test(size=(160, 40)) as pilot:
                await _wait(pilot, lambda: app.state == "finished")
                await pilot.pause()
                text = _status(app)
                assert "scripted json_object+schema ctx 8192" in text, text
                assert "R 0/1" in text, text  # the researcher's step: answered by the fallback
                return text

        text = asyncio.run(go())
    assert srv.probes[0] in ("json_object+schema",)  # the 500 on json_schema was stepped past
    assert "unreachable" not in text


def test_status_bar_shows_an_open_circuit_and_recovery(tmp_path):
    lab = make_lab(tmp_path / "lab")

    async def go():
        app = ResearchConsole(lab, None, clock=False)
        async with app.run_test(size=(160, 40)) as pilot:
            roles = {"researcher": {"spec": "openai:smollm2@u", "state": "ok"}}
            app.post_message(LoopEvent(ev.LLMStatus(roles=roles, detail="smollm2 json_object+schema ctx 8192")))
            for by in ("llm", "llm", "fallback"):
                app.post_message(LoopEvent(ev.AgentStep(role="researcher", by=by, spec="openai:smollm2@u")))
            await pilot.pause()
            text = _status(app)
            assert "smollm2 json_object+schema ctx 8192" in text and "●" in text and "R 2/3" in text, text
            roles = {"researcher": {"spec": "openai:smollm2@u", "state": "open"}}
            app.post_message(LoopEvent(ev.LLMStatus(roles=roles, detail="smollm2 json_object+schema ctx 8192")))
            await pilot.pause()
            assert "unreachable" in _status(app)
            roles = {"researcher": {"spec": "openai:smollm2@u", "state": "ok"}}
            app.post_message(LoopEvent(ev.LLMStatus(roles=roles, detail="smollm2 json_object+schema ctx 8192")))
            await pilot.pause()
            assert "unreachable" not in _status(app)

    asyncio.run(go())
