"""LLM backends against our own scripted server (Ollama's API and an OpenAI-compatible one)."""

from __future__ import annotations

import json
import time

import ollama
import pytest

from agents.events import AgentMessage, Warning, from_json, to_json
from agents.llm import (
    CallRecorder,
    LLMTimeout,
    LLMUnavailable,
    MalformedReply,
    OllamaBackend,
    OpenAIBackend,
    chat_json,
    extract_json,
    make_backend,
    parse_llm_spec,
    schema_error,
)
from tests.fake_llm_server import GOOD, SCHEMA, SYS, FakeLLMServer, Reply, ScriptedResponder, hashed_embedding



def _no_sleep(_s: float) -> None:
    pass


def test_real_ollama_client_speaks_to_fake_server():
    resp = ScriptedResponder().add("unknown", "hello there", "again")
    with FakeLLMServer(resp) as srv:
        client = ollama.Client(host=srv.url)
        assert [m.model for m in client.list().models] == ["scripted"]
        r = client.chat(model="scripted", messages=[{"role": "user", "content": "hi"}])
        assert r.message.content == "hello there"
        parts = list(client.chat(model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True))
        assert "".join(p.message.content for p in parts) == "again"
        assert parts[-1].done and parts[-1].eval_count == 1
        e = client.embed(model="scripted", input=["delta rule gating", "delta rule gating"])
        assert len(e.embeddings) == 2 and e.embeddings[0] == e.embeddings[1]


def test_ollama_backend_streams_with_schema_and_counts_tokens():
    resp = ScriptedResponder().add("researcher", Reply(content=GOOD, chunk_chars=5))
    with FakeLLMServer(resp) as srv:
        be = OllamaBackend("scripted", host=srv.url, timeout_s=5)
        pieces: list[str] = []
        r = be.chat(SYS, schema=SCHEMA, on_token=pieces.append)
        assert json.loads(r.text) == GOOD
        assert len(pieces) > 3 and "".join(pieces) == r.text
        assert r.tokens_in == 8 and r.tokens_out is not None and r.duration_s >= 0
        body = srv.chat_requests()[0]
        assert body["format"] == SCHEMA and body["stream"] is True and body["model"] == "scripted"


def test_ollama_host_from_environment(monkeypatch):
    resp = ScriptedResponder().add("researcher", GOOD)
    with FakeLLMServer(resp) as srv:
        monkeypatch.setenv("OLLAMA_HOST", srv.url)
        be = make_backend("ollama:scripted", timeout_s=5)
        assert isinstance(be, OllamaBackend) and be.host == srv.url
        assert json.loads(be.chat(SYS).text) == GOOD


@pytest.mark.parametrize("stream", [True, False])
def test_openai_backend(stream):
    resp = ScriptedResponder().add("researcher", GOOD)
    with FakeLLMServer(resp) as srv:
        be = OpenAIBackend("scripted", srv.url + "/v1", timeout_s=5, stream=stream)
        pieces: list[str] = []
        r = be.chat(SYS, schema=SCHEMA, on_token=pieces.append)
        assert json.loads(r.text) == GOOD and "".join(pieces) == r.text
        assert r.tokens_in == 8
        body = srv.chat_requests()[0]
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == SCHEMA


def test_openai_falls_back_to_json_object_when_schema_refused():
    calls = []

    def responder(req, path):
        calls.append(req.get("response_format", {}).get("type"))
        if req["response_format"]["type"] == "json_schema":
            return Reply(status=400, content="response_format json_schema is not supported")
        return GOOD

    with FakeLLMServer(responder) as srv:
        be = OpenAIBackend("scripted", srv.url, timeout_s=5)
        assert json.loads(be.chat(SYS, schema=SCHEMA).text) == GOOD
    assert calls == ["json_schema", "json_object"]


def test_parse_llm_spec():
    assert parse_llm_spec("builtin").backend == "builtin"
    s = parse_llm_spec("ollama:qwen3:8b")
    assert (s.backend, s.model, s.url) == ("ollama", "qwen3:8b", None)
    s = parse_llm_spec("openai:llama@http://127.0.0.1:8000/v1")
    assert (s.backend, s.model, s.url) == ("openai", "llama", "http://127.0.0.1:8000/v1")
    for bad in ("gpt", "openai:llama", "ollama:", "foo:bar"):
        with pytest.raises(ValueError):
            parse_llm_spec(bad)
    assert make_backend("builtin") is None


def test_extract_json_variants():
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! {"a": 2} hope it helps') == {"a": 2}
    assert extract_json('<think>hmm</think>{"a": 3}') == {"a": 3}
    with pytest.raises(ValueError):
        extract_json("no json here")
    with pytest.raises(ValueError):
        extract_json("[1, 2]")


def test_extract_json_accepts_raw_control_characters_in_strings():
    # small models put the code's newlines and indentation into the string as they are
    raw = '{"name": "Tabs", "motivation": "a\tb", "code": "class Mixer:\n\tpass\n"}'.replace("\\n", "\n")
    raw = raw.replace("\\t", "\t")
    assert "\n" in raw and "\t" in raw  # real control characters, not escapes
    obj = extract_json(raw)
    assert obj["code"] == "class Mixer:\n\tpass\n" and obj["motivation"] == "a\tb"
    assert extract_json("Here it is:\n" + raw + "\nDone.") == obj  # also inside surrounding text
    assert extract_json("```json\n" + raw + "\n```") == obj
    with pytest.raises(ValueError, match="not JSON"):
        extract_json('{"code": "unterminated\n')


def test_schema_error_names_the_field_and_the_rule():
    from agents import prompts

    j = prompts.JUDGE_SCHEMA
    assert schema_error({"performance": 7, "innovation": 1, "complexity": 10, "reason": "ok"}, j) is None
    assert schema_error({"performance": 11, "innovation": 5, "complexity": 5, "reason": "r"}, j) == (
        "performance must be an integer from 1 to 10 (got 11)")
    assert schema_error({"performance": 7.5, "innovation": 5, "complexity": 5, "reason": "r"}, j).startswith(
        "performance must be an integer")
    assert schema_error({"performance": True, "innovation": 5, "complexity": 5, "reason": "r"}, j).startswith(
        "performance must be an integer")
    err = schema_error({"performance": "7", "innovation": 0}, j)
    assert err.startswith("the reply misses the required field(s) complexity, reason; ")
    assert "innovation must be an integer from 1 to 10 (got 0)" in err and "performance must be an integer" in err
    assert "\n" not in err
    r = prompts.RESEARCHER_SCHEMA
    assert schema_error({"name": "", "motivation": None, "code": "x"}, r) == (
        "motivation must be a string (got null); name is empty")
    nested = {"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k", "v"]}}}}
    assert schema_error({"items": [{"k": 1, "v": 2}, {"k": "x"}]}, nested) == (
        "the reply misses the required field(s) items[1].v; items[1].k must be an integer (got \"x\")")
    many = {"type": "object", "properties": {c: {"type": "string"} for c in "abcde"}}
    assert schema_error({c: 1 for c in "abcde"}, many).endswith("; (and 2 more)")


def test_malformed_reply_is_sent_back_once_then_accepted():
    resp = ScriptedResponder().add("researcher", "this is not json", GOOD)
    events = []
    with FakeLLMServer(resp) as srv:
        rec = CallRecorder(exp_id="0001", emit=events.append)
        out = chat_json(OllamaBackend("scripted", host=srv.url, timeout_s=5), "researcher", SYS, SCHEMA, rec)
        assert out == GOOD
        second = srv.chat_requests()[1]["messages"]
        # the correction round: the task, then the error and the schema; not the unusable reply
        assert [m["role"] for m in second] == ["system", "user", "user"]
        assert "this is not json" not in json.dumps(second)
        assert "not JSON" in second[-1]["content"] and '"required":["name","motivation","code"]' in second[-1]["content"]
    assert [t["ok"] for t in rec.transcript] == [False, True]
    assert all(t["role"] == "researcher" and t["model"] == "ollama:scripted" for t in rec.transcript)
    kinds = [e.message for e in events if isinstance(e, AgentMessage)]
    assert kinds.count("request") == 2 and "delta" in kinds and kinds[-1] == "reply"
    assert all(e.exp_id == "0001" for e in events)


@pytest.mark.parametrize("bad2", [{"name": "x", "motivation": "m"}, {**GOOD, "code": "def broken(:"}])
def test_malformed_twice_fails_cleanly(bad2):
    def validate(obj):
        try:
            compile(obj["code"], "mixer.py", "exec")
        except SyntaxError as exc:
            return f"the code does not parse: {exc.msg} (line {exc.lineno})"
        return None

    resp = ScriptedResponder().add("researcher", {"name": "x"}, bad2)
    with FakeLLMServer(resp) as srv:
        rec = CallRecorder()
        with pytest.raises(MalformedReply):
            chat_json(OpenAIBackend("scripted", srv.url, timeout_s=5), "researcher", SYS, SCHEMA, rec,
                      validate=validate)
        assert "misses the required field(s) motivation, code" in srv.chat_requests()[1]["messages"][-1]["content"]
    assert len(rec.transcript) == 2 and not any(t["ok"] for t in rec.transcript)


def test_server_that_hangs_times_out_once_and_is_not_retried():
    resp = ScriptedResponder().add("researcher", *[Reply(content=GOOD, hang_s=5.0)] * 3)
    events = []
    with FakeLLMServer(resp, lifetime_s=30) as srv:
        rec = CallRecorder(emit=events.append)
        be = OllamaBackend("scripted", host=srv.url, timeout_s=0.3)
        with pytest.raises(LLMTimeout):
            chat_json(be, "researcher", SYS, SCHEMA, rec, retries=2, sleep=_no_sleep)
        assert len(srv.chat_requests()) == 1  # a timeout is not retried: the next try would be as slow
    assert [t["ok"] for t in rec.transcript] == [False]
    assert rec.transcript[0]["duration_s"] >= 0.25  # the failed call's time is kept


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_server_that_dies_mid_stream_is_retried(kind):
    resp = ScriptedResponder().add("researcher", Reply(content=GOOD, die_after=2, chunk_chars=4), GOOD)
    with FakeLLMServer(resp) as srv:
        be = (OllamaBackend("scripted", host=srv.url, timeout_s=5) if kind == "ollama"
              else OpenAIBackend("scripted", srv.url, timeout_s=5))
        rec = CallRecorder()
        sleeps = []
        assert chat_json(be, "researcher", SYS, SCHEMA, rec, retries=2, sleep=sleeps.append) == GOOD
        assert sleeps == [1.0]
        assert [t["ok"] for t in rec.transcript] == [False, True]
        assert "mid-reply" in rec.transcript[0]["error"] or "before the reply" in rec.transcript[0]["error"]
        # the two chunks that came before the connection broke are kept as the attempt
        assert rec.transcript[0]["reply"] == json.dumps(GOOD)[:8] and rec.transcript[0]["partial"]


def test_unreachable_server_backs_off_exponentially():
    with FakeLLMServer() as srv:
        url = srv.url
    be = OllamaBackend("scripted", host=url, timeout_s=2)
    sleeps = []
    with pytest.raises(LLMUnavailable, match="after 3 tries"):
        chat_json(be, "judge", SYS, SCHEMA, CallRecorder(), retries=2, backoff_s=0.5, sleep=sleeps.append)
    assert sleeps == [0.5, 1.0]


def test_server_error_status_is_unavailable():
    resp = ScriptedResponder().add("researcher", Reply(status=500, content="boom"))
    with FakeLLMServer(resp) as srv:
        with pytest.raises(LLMUnavailable, match="500"):
            OllamaBackend("scripted", host=srv.url, timeout_s=5).chat(SYS)


def test_events_round_trip():
    ev = AgentMessage(exp_id="0003", role="judge", model="m", message="reply", text="t", tokens_in=3)
    back = from_json(to_json(ev))
    assert back == ev and type(back) is AgentMessage
    assert hashed_embedding("a b") == hashed_embedding("a b")
