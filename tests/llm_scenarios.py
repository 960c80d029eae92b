"""Backend scenarios run against a real llama.cpp server (``tests/real_llm``, which records their
HTTP exchanges as cassettes) and replayed from those cassettes in the default suite
(``tests/test_llm_cassettes.py``). Each scenario takes a backend and returns what it observed;
the same function runs in both places, so the replay sends the very requests that were
recorded.

Cassettes live in ``tests/cassettes/<name>.yaml``; they match requests on method and path in
recorded order, so the server's port does not matter.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from agents import prompts
from agents.llm import (
    CallPolicy,
    CallRecorder,
    ChatBackend,
    ContextOverflow,
    LLMError,
    chat_json,
)

CASSETTES = Path(__file__).parent / "cassettes"
#: the context the real server is started with (``--n_ctx``) and the model alias it serves
N_CTX = 8192
MODEL = "smollm2"

_SEED_CODE = '''import torch
import torch.nn as nn
from training.ops import ShortConvolution, delta_rule, l2_norm


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, conv_size: int = 4, **kwargs):
        super().__init__()
        self.h = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.beta = nn.Linear(d_model, n_heads, bias=False)
        self.conv = ShortConvolution(3 * d_model, kernel_size=conv_size)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, l, d = x.shape
        q, k, v = self.conv(self.qkv(x)).chunk(3, dim=-1)
        q, k, v = (t.view(b, l, self.h, -1).transpose(1, 2) for t in (q, k, v))
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)
        o = delta_rule(l2_norm(q), l2_norm(k), v, beta)
        return self.o(o.transpose(1, 2).reshape(b, l, d))
'''


def _parent() -> Any:
    return SimpleNamespace(id="0001", name="DeltaNet", status="accepted", fitness=0.61,
                           motivation="The delta rule writes each key-value pair with a learned strength.",
                           metrics={"status": "ok", "probe_mean": 0.42, "probes": {"mqar": 0.55, "noisy_recall": 0.29}},
                           code=_SEED_CODE, analysis="", problem="noisy recall stays low while mqar is learned",
                           extra={})


def research_prompt() -> prompts.Prompt:
    """A real Researcher prompt (the seed as parent, one cognition-like note)."""
    ctx = SimpleNamespace(exp_id="0002", parent=_parent(), scale="probe", param_budget=32768, baselines={},
                          references=[], cognition=[], failures=[], rejections=[])
    return prompts.researcher_prompt(ctx)


def judge_prompt() -> prompts.Prompt:
    """A real Judge prompt."""
    rec = _parent()
    rec.id, rec.name = "0002", "WideKeys"
    return prompts.judge_prompt(rec, _parent(), {"deltanet": {"probe_mean": 0.42}}, ("0001", 0.71))


def negotiate(be: ChatBackend) -> dict[str, Any]:
    """Negotiation with the context the server was started with given as the config value
    (llama-cpp-python's server does not report its context)."""
    caps = be.negotiate(context_length=N_CTX)
    return {"caps": caps, "describe": caps.describe()}


def researcher_call(be: ChatBackend) -> dict[str, Any]:
    """One Researcher step under a reply limit: the model's real reply (often cut or unusable,
    then corrected once)."""
    be.negotiate(context_length=N_CTX)
    rec = CallRecorder()
    pieces: list[str] = []
    rec.emit = lambda ev: pieces.append(ev.text) if getattr(ev, "message", "") == "delta" else None
    pol = CallPolicy(max_tokens=384, temperature=0.7, correction_temperature=0.2, context_length=N_CTX,
                     wall_timeout_s=240.0)
    out: dict[str, Any] = {"transcript": rec.transcript, "pieces": pieces}
    try:
        out["obj"] = chat_json(be, "researcher", research_prompt(), prompts.RESEARCHER_SCHEMA, rec, policy=pol)
    except LLMError as exc:
        out["error"] = exc
    return out


def judge_call(be: ChatBackend) -> dict[str, Any]:
    """One Judge step (a small reply the grammar keeps to JSON)."""
    be.negotiate(context_length=N_CTX)
    rec = CallRecorder()
    pol = CallPolicy(max_tokens=128, temperature=0.7, correction_temperature=0.2, context_length=N_CTX)
    out: dict[str, Any] = {"transcript": rec.transcript}
    try:
        out["obj"] = chat_json(be, "judge", judge_prompt(), prompts.JUDGE_SCHEMA, rec, policy=pol)
    except LLMError as exc:
        out["error"] = exc
    return out


def runaway(be: ChatBackend) -> dict[str, Any]:
    """A free-text reply that runs into its ``max_tokens`` (finish_reason ``length``)."""
    msgs = [{"role": "system", "content": "You are a storyteller."},
            {"role": "user", "content": "Tell a very long story about a lighthouse keeper, in many chapters."}]
    r = be.chat(msgs, max_tokens=48, temperature=0.7)
    return {"reply": r}


def context_overflow(be: ChatBackend) -> dict[str, Any]:
    """A prompt longer than the server's context: the server's own error (and its number)."""
    msgs = [{"role": "system", "content": "You are the Analyst."},
            {"role": "user", "content": "lighthouse keeper " * 6000}]
    try:
        be.chat(msgs, max_tokens=16)
    except ContextOverflow as exc:
        return {"error": exc}
    return {"error": None}


SCENARIOS: dict[str, Callable[[ChatBackend], dict[str, Any]]] = {
    "llamacpp_negotiate": negotiate,
    "llamacpp_researcher": researcher_call,
    "llamacpp_judge": judge_call,
    "llamacpp_runaway": runaway,
    "llamacpp_context_overflow": context_overflow,
}


def cassette(name: str) -> Any:
    """The vcr context manager of a cassette (``record_mode`` set by the caller's vcr)."""
    return CASSETTES / f"{name}.yaml"


def vcr_config(record: bool) -> Any:
    """A ``vcr.VCR`` matching on method and path, recording everything or replaying only."""
    import vcr

    return vcr.VCR(record_mode="all" if record else "none", match_on=["method", "path"],
                   decode_compressed_response=True, filter_headers=["authorization", "date"],
                   before_record_request=_shorten_body)


def _shorten_body(request: Any) -> Any:
    """Requests are matched on method and path only, so a long request body (a prompt over the
    context) is kept as its first 4000 characters: the cassettes stay small."""
    body = request.body
    if body and len(body) > 6000:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        request.body = (text[:4000] + f"…[{len(text) - 4000} more characters not kept]").encode()
    return request


def check(name: str, out: dict[str, Any]) -> None:
    """What every run of a scenario must show (recorded or replayed). Raises AssertionError."""
    if name == "llamacpp_negotiate":
        caps = out["caps"]
        assert caps.reachable and caps.json_mode == "json_object+schema", caps
        assert caps.context_length == N_CTX and caps.tokenizer, caps
        assert any("json_schema: refused" in n for n in caps.notes), caps.notes
        assert out["describe"].endswith(f"JSON via json_object+schema, ctx {N_CTX}"), out["describe"]
    elif name == "llamacpp_researcher":
        t = out["transcript"]
        assert t and t[0]["reply"] and t[0]["tokens_in"] and not t[0].get("tokens_estimated"), t[:1]
        assert len(out["pieces"]) > 5  # a real token stream
        if "obj" not in out:
            assert len(t) == 2 and not t[1]["ok"] and t[1]["temperature"] == 0.2, t
    elif name == "llamacpp_judge":
        t = out["transcript"]
        assert t and t[0]["reply"].lstrip().startswith("{"), t[:1]  # grammar-constrained JSON
    elif name == "llamacpp_runaway":
        r = out["reply"]
        # llama-cpp-python's stream carries no usage (chat_json then asks its tokenizer endpoint)
        assert r.finish_reason == "length" and r.tokens_out in (None, 48) and r.text, r
    elif name == "llamacpp_context_overflow":
        err = out["error"]
        assert err is not None and err.context_length == N_CTX, err
        assert "maximum context length" in str(err)
