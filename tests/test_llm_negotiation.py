"""Capability negotiation, bounded calls, the circuit breaker and step accounting, against the
scripted server (Ollama's API, an OpenAI-compatible one and Ollama's ``/v1`` flavour)."""

from __future__ import annotations

import json

import pytest

from agents import prompts
from agents.events import AgentStep, LLMStatus, Warning
from agents.llm import (
    CallPolicy,
    CallRecorder,
    LLMTimeout,
    MalformedReply,
    ModelMissing,
    OllamaBackend,
    OpenAIBackend,
    chat_json,
    make_backend,
)
from agents.llm_session import CircuitBreaker, CircuitOpen, LLMSession, RoleSession, schema_max_tokens, tally
from agents.llm import LLMSpec
from tests.fake_llm_server import GOOD, SCHEMA, SYS, FakeLLMServer, Reply, ScriptedResponder

KINDS = ["ollama", "openai", "ollama-v1"]


def _backend(kind: str, srv: FakeLLMServer, **kw):
    if kind == "ollama":
        return OllamaBackend("scripted", host=srv.url, timeout_s=kw.get("timeout_s", 5))
    return OpenAIBackend("scripted", srv.url + "/v1", timeout_s=kw.get("timeout_s", 5))


def _server(kind: str, responder=None, **kw) -> FakeLLMServer:
    return FakeLLMServer(responder, flavour="ollama" if kind == "ollama-v1" else "openai", **kw)


def test_negotiation_steps_down_past_a_500_to_json_object_with_schema():
    # llama-cpp-python answers json_schema with HTTP 500 (pydantic: "Input should be 'text' or
    # 'json_object'") and honours {"type": "json_object", "schema": ...}
    with FakeLLMServer(formats=("json_object+schema", "json_object", "plain"), refuse_status=500) as srv:
        be = OpenAIBackend("scripted", srv.url + "/v1", timeout_s=5)
        caps = be.negotiate()
        assert srv.probes == ["json_object+schema"]
        assert caps.reachable and caps.model_present and caps.json_mode == "json_object+schema"
        assert caps.context_length == 2048 and caps.context_source == "assumed"
        assert "JSON via json_object+schema" in caps.describe() and "(assumed)" in caps.describe()
        assert "json_schema: refused" in caps.notes[0] and "Input should be" in caps.notes[0]
        assert be.negotiate() is caps  # remembered: no second probe
        be.chat(SYS, schema=SCHEMA)
        body = srv.chat_requests()[-1]
        assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}


@pytest.mark.parametrize("formats,expected", [
    (("json_schema", "json_object+schema", "json_object", "plain"), "json_schema"),
    (("json_object", "plain"), "json_object"),
    (("plain",), "plain"),
])
def test_negotiation_order(formats, expected):
    with FakeLLMServer(formats=formats) as srv:
        caps = OpenAIBackend("scripted", srv.url, timeout_s=5).negotiate()
    assert caps.json_mode == expected


def test_ollama_negotiation_context_from_num_ctx_and_missing_model():
    with FakeLLMServer(context_length=4096) as srv:
        caps = OllamaBackend("scripted", host=srv.url, timeout_s=5).negotiate()
        assert caps.json_mode == "json_schema" and caps.context_length == 4096 and caps.context_source == "server"
        with pytest.raises(ModelMissing, match="ollama pull qwen"):
            OllamaBackend("qwen", host=srv.url, timeout_s=5).negotiate()
    with FakeLLMServer() as srv:  # no num_ctx set: one is sent with every call
        be = OllamaBackend("scripted", host=srv.url, timeout_s=5)
        caps = be.negotiate()
        assert caps.context_length == 8192 and "num_ctx sent" in caps.describe()
        be.chat(SYS, schema=SCHEMA, max_tokens=100, temperature=0.3)
        opts = srv.chat_requests()[-1]["options"]
        assert opts == {"num_ctx": 8192, "num_predict": 100, "temperature": 0.3}


def test_openai_context_from_props_config_and_ollama_v1():
    with FakeLLMServer(context_length=8192, props=True) as srv:
        caps = OpenAIBackend("scripted", srv.url + "/v1", timeout_s=5).negotiate(context_length=4096)
        assert caps.context_length == 4096 and caps.context_source == "config"  # the user's limit wins
        caps = OpenAIBackend("scripted", srv.url + "/v1", timeout_s=5).negotiate()
        assert caps.context_length == 8192 and caps.context_source == "server"
        assert caps.describe().endswith("ctx 8192")
    with FakeLLMServer(context_length=16384, flavour="ollama") as srv:  # Ollama's /v1: num_ctx via /api/show
        caps = OpenAIBackend("scripted", srv.url + "/v1", timeout_s=5).negotiate()
        assert caps.context_length == 16384
    with FakeLLMServer() as srv:
        caps = OpenAIBackend("scripted", srv.url + "/v1", timeout_s=5).negotiate(context_length=3000)
        assert (caps.context_length, caps.context_source) == (3000, "config")


@pytest.mark.parametrize("kind", KINDS)
def test_server_that_stops_answering_during_the_probe_is_unreachable_not_plain(kind):
    # e.g. a llama.cpp build whose first generation crashes the server: the probe's connection
    # breaks; that is no verdict on the JSON form, so negotiation stops and says what happened
    dies = Reply(content={"ok": True}, chunk_chars=4, die_after=1)
    with _server(kind, probe_reply=dies) as srv:
        be = _backend(kind, srv)
        caps = be.negotiate()
        assert srv.probes == ["json_schema"]  # no walk down the other forms
    assert not caps.reachable and "stopped answering during the JSON probe (json_schema)" in caps.error
    assert "unreachable" in caps.describe() and "JSON via" not in caps.describe()
    assert be.caps is None and be.json_mode == "json_schema"  # not remembered: tried again later


def test_unreachable_server_is_reported_not_remembered():
    with FakeLLMServer() as srv:
        url = srv.url
    be = OpenAIBackend("scripted", url, timeout_s=2)
    caps = be.negotiate()
    assert not caps.reachable and "cannot reach" in caps.error and "unreachable" in caps.describe()
    assert be.caps is None  # tried again next time


@pytest.mark.parametrize("kind", KINDS)
def test_max_tokens_and_correction_temperature_sent(kind):
    resp = ScriptedResponder().add("researcher", "not json", GOOD)
    with _server(kind, resp) as srv:
        be = _backend(kind, srv)
        pol = CallPolicy(max_tokens=300, temperature=0.7, correction_temperature=0.2)
        assert chat_json(be, "researcher", SYS, SCHEMA, CallRecorder(), policy=pol) == GOOD
        first, second = srv.chat_requests()
    if kind == "ollama":
        assert first["options"]["num_predict"] == 300 and first["options"]["temperature"] == 0.7
        assert second["options"]["temperature"] == 0.2
    else:
        assert first["max_tokens"] == 300 and first["temperature"] == 0.7 and second["temperature"] == 0.2
    assert "not json" not in json.dumps(second["messages"])


@pytest.mark.parametrize("kind", KINDS)
def test_server_error_bodies_kept_whole(kind):
    long_error = "boom " * 200  # 1000 characters
    resp = ScriptedResponder().add("researcher", *[Reply(status=500, content=long_error)] * 3)
    with _server(kind, resp) as srv:
        rec = CallRecorder()
        with pytest.raises(Exception) as info:
            chat_json(_backend(kind, srv), "researcher", SYS, SCHEMA, rec, retries=1, sleep=lambda s: None)
    assert not str(info.value).startswith("researcher:")  # the caller adds the role, once
    assert all(long_error.strip() in t["error"] for t in rec.transcript)
    assert len(rec.transcript) == 2 and all(t["duration_s"] >= 0 for t in rec.transcript)


def test_runaway_reply_cut_at_max_tokens_is_corrected_within_the_context():
    runaway = Reply(content='{"name": "x", "motivation": "' + "very " * 400, finish_reason="length")
    resp = ScriptedResponder().add("researcher", runaway, GOOD)
    with FakeLLMServer(resp, context_length=2048, props=True) as srv:
        be = OpenAIBackend("scripted", srv.url, timeout_s=5)
        be.negotiate()
        rec = CallRecorder()
        pol = CallPolicy(max_tokens=1536, context_length=2048, temperature=0.7, correction_temperature=0.2)
        assert chat_json(be, "researcher", SYS, SCHEMA, rec, policy=pol) == GOOD
        first, second = srv.chat_requests()
    assert first["max_tokens"] == 1024  # never more than half the context
    assert rec.transcript[0]["finish_reason"] == "length" and "cut at the limit of 1024" in rec.transcript[0]["error"]
    assert "very very" not in json.dumps(second["messages"])  # the runaway reply is not sent back


def test_prompt_fitted_by_priority_and_trimming_recorded():
    pr = prompts.Prompt("You are the Researcher.")
    pr.add(0, "parent", "P" * 900).add(5, "cognition a", "A" * 900).add(5.01, "cognition b", "B" * 900)
    pr.add(6, "reference 0003", "R" * 900).add(0, "instruction", "Propose.")
    resp = ScriptedResponder().add("researcher", GOOD)
    with FakeLLMServer(resp) as srv:
        rec = CallRecorder()
        pol = CallPolicy(max_tokens=200, context_length=1000, chars_per_token=3.0)
        chat_json(OpenAIBackend("scripted", srv.url, timeout_s=5), "researcher", pr, SCHEMA, rec, policy=pol)
        sent = srv.chat_requests()[0]["messages"][1]["content"]
    assert rec.transcript[0]["trimmed"] == ["reference 0003", "cognition b"]
    assert "A" * 900 in sent and "B" not in sent and "P" * 900 in sent


def test_context_overflow_from_the_server_refits_to_its_number():
    pr = prompts.Prompt("You are the Researcher.")
    pr.add(0, "parent", "P" * 3000).add(5, "cognition a", "A" * 6000).add(0, "instruction", "Propose.")
    resp = ScriptedResponder().add("researcher", GOOD)
    with FakeLLMServer(resp, context_length=2048) as srv:
        rec = CallRecorder()
        pol = CallPolicy(max_tokens=512, context_length=8192)  # the config says more than the server has
        assert chat_json(OpenAIBackend("scripted", srv.url, timeout_s=5), "researcher", pr, SCHEMA, rec,
                         policy=pol) == GOOD
    assert pol.context_length == 2048
    assert "maximum context length is 2048" in rec.transcript[0]["error"]
    assert rec.transcript[1]["ok"] and rec.transcript[1]["trimmed"] == ["cognition a"]


@pytest.mark.parametrize("kind", KINDS)
def test_wall_timeout_covers_a_slow_stream_and_keeps_what_came(kind):
    slow = Reply(content=GOOD, chunk_chars=2, chunk_delay_s=0.1)  # ~40 chunks: 4 s, each within the read timeout
    resp = ScriptedResponder().add("researcher", slow)
    events = []
    with _server(kind, resp, lifetime_s=30) as srv:
        rec = CallRecorder(emit=events.append)
        with pytest.raises(LLMTimeout, match="did not finish within 1 s") as info:
            chat_json(_backend(kind, srv), "researcher", SYS, SCHEMA, rec, policy=CallPolicy(wall_timeout_s=1.0))
    full = json.dumps(GOOD)
    partial = info.value.partial
    # the stream was cut by the wall limit, not by its end, and what came is kept as the attempt
    assert partial and len(partial) < len(full) and full.startswith(partial)
    streamed = "".join(e.text for e in events if getattr(e, "message", "") == "delta")
    assert streamed == partial
    t = rec.transcript[0]
    assert t["ok"] is False and t["reply"] == partial and t["partial"] is True
    assert "characters received" in t["error"] and t["duration_s"] >= 0.9


def test_tokens_from_tokenizer_endpoint_else_estimated():
    resp = ScriptedResponder().add("researcher", GOOD, GOOD)
    with FakeLLMServer(resp, usage=False, tokenizer=True) as srv:
        rec = CallRecorder()
        chat_json(OpenAIBackend("scripted", srv.url, timeout_s=5), "researcher", SYS, SCHEMA, rec)
        t = rec.transcript[0]
        assert t["tokens_in"] == len(("[system]\n" + SYS[0]["content"] + "\n\n[user]\ngo").split())
        assert "tokens_estimated" not in t
    resp = ScriptedResponder().add("researcher", GOOD)
    with FakeLLMServer(resp, usage=False) as srv:
        rec = CallRecorder()
        chat_json(OpenAIBackend("scripted", srv.url, timeout_s=5), "researcher", SYS, SCHEMA, rec)
        t = rec.transcript[0]
        assert t["tokens_estimated"] is True and t["tokens_in"] > 0 and t["tokens_out"] > 0


def test_circuit_breaker_opens_once_and_retries_later():
    JSYS = [{"role": "system", "content": "You are the Judge."}, {"role": "user", "content": "score"}]
    clock = [0.0]
    br = CircuitBreaker(threshold=3, cooldown_s=60.0, clock=lambda: clock[0])
    resp = ScriptedResponder().add("judge", *["bad"] * 6, {"performance": 5})
    with FakeLLMServer(resp) as srv:
        be = OpenAIBackend("scripted", srv.url, timeout_s=5)
        rs = RoleSession("judge", be, breaker=br, retries=0)
        events = []
        rec = CallRecorder(emit=events.append)
        schema = {"type": "object", "properties": {"performance": {"type": "integer"}}, "required": ["performance"]}
        for _ in range(3):
            with pytest.raises(MalformedReply):
                rs.ask(rec, JSYS, schema)
        warnings = [e for e in events if isinstance(e, Warning)]
        assert len(warnings) == 1 and "3 consecutive failures" in warnings[0].message
        n = len(srv.chat_requests())
        with pytest.raises(CircuitOpen, match="tried again in 1.0 min"):
            rs.ask(rec, JSYS, schema)
        assert len(srv.chat_requests()) == n  # no call while open
        clock[0] = 61.0
        assert rs.ask(rec, JSYS, schema) == {"performance": 5}  # half-open: one try, it works
        assert br.state == "closed"
        assert any(isinstance(e, Warning) and "answers again" in e.message for e in events)


def test_session_shares_backends_negotiates_once_and_reports():
    with FakeLLMServer(formats=("json_object", "plain"), context_length=8192, props=True) as srv:
        spec = LLMSpec("openai", "scripted", srv.url + "/v1")
        s = LLMSession({"researcher": spec, "analyst": spec, "judge": LLMSpec("builtin"), "debugger": spec})
        events = []
        s.negotiate(events.append)
        s.negotiate(events.append)
        assert srv.probes == ["json_object"]  # one backend, negotiated once
        lines = s.describe()
        assert lines[0] == f"researcher: scripted @ {srv.url}/v1, JSON via json_object, ctx 8192"
        assert lines[2] == "judge: built-in"
        assert s.session("researcher").policy.context_length == 8192
        st = [e for e in events if isinstance(e, LLMStatus)][-1]
        assert st.roles["judge"]["state"] == "builtin" and st.roles["researcher"]["state"] == "ok"
        assert st.detail == "scripted json_object ctx 8192"


def test_schema_max_tokens_per_role():
    assert schema_max_tokens(prompts.RESEARCHER_SCHEMA) == schema_max_tokens(prompts.DEBUGGER_SCHEMA) == 1536
    assert schema_max_tokens(prompts.JUDGE_SCHEMA) < schema_max_tokens(prompts.ANALYST_SCHEMA) < 1536


def test_tally_counts_steps_calls_and_estimates():
    recs = [{"extra": {"agent_steps": [{"role": "researcher", "by": "llm", "spec": "openai:m@u"},
                                       {"role": "analyst", "by": "fallback", "spec": "openai:m@u"},
                                       {"role": "judge", "by": "builtin", "spec": "builtin"}]},
             "transcript": [{"role": "researcher", "model": "openai:m@u", "ok": True, "duration_s": 2.0,
                             "tokens_in": 10, "tokens_out": 5},
                            {"role": "analyst", "model": "openai:m@u", "ok": False, "duration_s": 4.0,
                             "tokens_in": 7, "tokens_out": 1, "tokens_estimated": True},
                            {"role": "analyst", "model": "builtin", "ok": True, "duration_s": 0.0}]}]
    t = tally(recs)
    assert (t["researcher"]["llm"], t["analyst"]["fallback"], t["judge"]["builtin"]) == (1, 1, 1)
    assert t["analyst"]["calls"] == 1 and t["analyst"]["failed_calls"] == 1 and t["analyst"]["tokens_estimated"]
    assert t["researcher"]["call_seconds"] == 2.0 and t["researcher"]["specs"] == ["openai:m@u"]


def test_make_backend_kinds():
    assert isinstance(make_backend("openai:m@http://127.0.0.1:1/v1"), OpenAIBackend)
    assert make_backend("builtin") is None
    assert isinstance(AgentStep(role="judge"), AgentStep)


def test_headless_lines_show_each_reply_and_error_once_prefixed():
    from agents.events import AgentMessage, StageChanged
    from asiarch_tui.cli_run import _Display

    d = _Display(3)
    err = d.on_event(AgentMessage(exp_id="0002", role="researcher", model="openai:m@u", message="error",
                                  text="the reply is not JSON (Expecting value at position 0)", duration_s=41.5,
                                  tokens_in=2500, tokens_out=1024, attempt=1))
    assert err == ("0002: researcher (openai:m@u) attempt 1: unusable after 41.5 s, 2500 tokens in / 1024 out: "
                   "the reply is not JSON (Expecting value at position 0)")
    ok = d.on_event(AgentMessage(exp_id="0002", role="judge", model="openai:m@u", message="reply", duration_s=3.0))
    assert ok == "0002: judge (openai:m@u) attempt 1: replied in 3.0 s"
    assert d.on_event(AgentMessage(exp_id="0002", role="analyst", model="builtin", message="reply")) is None
    fb = d.on_event(AgentStep(exp_id="0002", role="researcher", by="fallback", spec="openai:m@u", reason="x"))
    assert fb == "0002: researcher: the built-in researcher answered this step"
    st = d.on_event(StageChanged(exp_id="0002", stage="research", status="failed", detail="no researcher"))
    assert st == "0002: research failed: no researcher"  # one prefix, not two


def test_agents_table_status_bar_and_report_section():
    from rich.console import Console

    from asiarch_tui.cli_run import agents_table
    from asiarch_tui.report import agents_html
    from asiarch_tui.panels import StatusBar

    recs = [{"extra": {"agent_steps": [{"role": "researcher", "by": "llm", "spec": "openai:smollm2@u"},
                                       {"role": "researcher", "by": "fallback", "spec": "openai:smollm2@u"}]},
             "transcript": [{"role": "researcher", "model": "openai:smollm2@u", "ok": True, "duration_s": 12.0,
                             "tokens_in": 900, "tokens_out": 300}]}]
    t = tally(recs)
    con = Console(width=140, record=True)
    con.print(agents_table(t, {"researcher": "openai:smollm2@u"}))
    out = con.export_text()
    assert "smollm2" in out and "1 LLM / 1 built-in" in out and "12.0 / 12.0 s" in out and "900/300" in out
    html = agents_html(recs)
    assert "<h2>Agents</h2>" in html and "1 LLM / 1 built-in" in html
    bar = StatusBar()
    bar.values["llm_steps"] = {"researcher": (1, 1)}
    assert "R 1/2" in bar.render_status().plain
