"""LLM backends behind one small interface: a bounded chat call with an optional JSON schema.

* ``OllamaBackend``: the official ``ollama`` client; host from the argument or ``OLLAMA_HOST``;
  structured output through Ollama's ``format`` parameter (a JSON schema, or ``"json"``).
* ``OpenAIBackend``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (llama.cpp's
  ``llama-server``, llama-cpp-python's server, vLLM, LM Studio, Ollama's ``/v1``) through httpx.
* ``builtin``: no LLM; ``make_backend("builtin")`` returns ``None`` and each agent uses its
  rule-based counterpart.

**Negotiation.** ``backend.negotiate()`` runs once per backend and session: it checks that the
server answers and serves the model, finds the context length (llama.cpp ``/props``, Ollama
``show`` / ``num_ctx``, else the configured value, else an assumed 2048 marked as such) and
which structured-output form the server honours, by a tiny probe call per form in the order
``json_schema`` → ``json_object+schema`` → ``json_object`` → ``plain`` (JSON extracted from
text). The result (:class:`Capabilities`) is kept on the backend and used by every later call.

**Bounded calls.** ``chat`` takes ``max_tokens``, ``temperature`` and a wall-clock limit that
also covers slow token streams. ``chat_json`` (what the agents call) fits the prompt into the
context with room for the reply (dropping low-priority prompt sections first, see
``agents.prompts.Prompt``, and recording what it dropped), retries an unreachable server with
backoff, sends an unusable reply back once as a *correction round* (the task, the error and
the schema; not the unusable reply; at a different temperature), and raises an
:class:`LLMError` subclass when the step cannot be answered, so the agent falls back to its
built-in counterpart. Every call, failed or not, is kept in a ``CallRecorder`` with its wall
time and token counts (server usage, else the server's tokenizer endpoint, else an estimate
marked ``tokens_estimated``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import httpx
import jsonschema

from agents.events import AgentMessage, AgentStep, Event, Warning

__all__ = [
    "LLMError",
    "LLMUnavailable",
    "LLMTimeout",
    "ContextOverflow",
    "ModelMissing",
    "MalformedReply",
    "ChatReply",
    "Capabilities",
    "JSON_MODES",
    "ChatBackend",
    "OllamaBackend",
    "OpenAIBackend",
    "LLMSpec",
    "parse_llm_spec",
    "make_backend",
    "CallPolicy",
    "CallRecorder",
    "estimate_tokens",
    "extract_json",
    "schema_error",
    "chat_json",
]

DEFAULT_TIMEOUT_S = 300.0
#: llama.cpp's and llama-cpp-python's default ``n_ctx`` (and old Ollama's ``num_ctx``): the
#: context assumed when neither the server nor the config says.
ASSUMED_CONTEXT = 2048
#: The context asked of Ollama (``num_ctx``) when neither the model nor the config sets one.
OLLAMA_NUM_CTX = 8192
#: Structured-output forms, most constrained first (the negotiation order).
JSON_MODES = ("json_schema", "json_object+schema", "json_object", "plain")
_PROBE_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
}
_PROBE_MESSAGES = [
    {"role": "system", "content": "You answer with one JSON object and nothing else."},
    {"role": "user", "content": 'Reply with the JSON object {"ok": true}.'},
]


class LLMError(Exception):
    """Base of the errors an LLM call can end with (the step falls back to the built-in agent)."""


class LLMUnavailable(LLMError):
    """The server could not be reached, failed (5xx), or died mid-reply.

    ``partial`` is the text streamed before the failure ("" when nothing came): the transcript
    keeps it as the model's attempt. ``status`` is the HTTP status of the server's error answer
    (None when there was no answer: refused connection, broken stream, timeout)."""

    def __init__(self, message: str, partial: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.partial = partial
        self.status = status


class LLMTimeout(LLMUnavailable):
    """The call did not finish within its wall-clock limit (slow prompt or slow token stream);
    ``partial`` holds what the stream had delivered by then."""


class ContextOverflow(LLMError):
    """The server refused the prompt as longer than its context; ``context_length`` if it said."""

    def __init__(self, message: str, context_length: int | None = None) -> None:
        super().__init__(message)
        self.context_length = context_length


class ModelMissing(LLMError):
    """The server answers but does not serve the configured model."""


class MalformedReply(LLMError):
    """The model's reply stayed unusable after its correction round."""


@dataclass
class ChatReply:
    """One completed chat call. ``finish_reason`` is ``stop``, ``length`` (cut at max_tokens)…"""

    text: str
    model: str
    duration_s: float
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str | None = None


@dataclass
class Capabilities:
    """What negotiation found out about one backend and model (remembered for the session).

    ``json_mode`` is one of :data:`JSON_MODES`; ``context_source`` says where
    ``context_length`` came from (``server``, ``config``, ``assumed``, ``server error``…).
    """

    spec: str
    model: str
    url: str
    reachable: bool = False
    model_present: bool | None = None
    context_length: int = ASSUMED_CONTEXT
    context_source: str = "assumed"
    json_mode: str = "plain"
    tokenizer: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    probe_s: float = 0.0

    def describe(self) -> str:
        """One line, e.g. ``smollm2 @ http://127.0.0.1:8080/v1, JSON via json_object+schema, ctx 8192``."""
        if not self.reachable:
            return f"{self.model} @ {self.url}: unreachable ({self.error or 'no answer'})"
        ctx = f"ctx {self.context_length}" + ("" if self.context_source in ("server", "config") else
                                               f" ({self.context_source})")
        return f"{self.model} @ {self.url}, JSON via {self.json_mode}, {ctx}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


def estimate_tokens(text: str, chars_per_token: float = 3.0) -> int:
    """A conservative token estimate for ``text`` (code and English run 3–4 characters a token)."""
    return int(math.ceil(len(text or "") / max(0.5, chars_per_token)))


_CTX_PATTERNS = (
    re.compile(r"maximum context length is (\d+)", re.I),
    re.compile(r"context window of (\d+)", re.I),
    re.compile(r"\"n_ctx\"\s*:\s*(\d+)"),
    re.compile(r"context size[^0-9]{0,40}(\d+)", re.I),
)


def _context_from_error(text: str) -> int | None:
    for pat in _CTX_PATTERNS:
        m = pat.search(text or "")
        if m:
            return int(m.group(1))
    return None


def _is_context_error(status: int, text: str) -> bool:
    t = (text or "").lower()
    return status in (400, 413, 422, 500) and ("context_length_exceeded" in t or "context length" in t
                                               or "context window" in t or "exceed_context_size" in t
                                               or "exceeds the available context" in t)


class ChatBackend(ABC):
    """A chat model. ``spec`` is its user-facing name, e.g. ``ollama:qwen3``; ``caps`` is set
    by :meth:`negotiate` (None before)."""

    model: str
    spec: str
    url: str = ""
    caps: Capabilities | None = None
    #: the structured-output form used by ``chat`` (set by negotiation; see ``JSON_MODES``)
    json_mode: str = "json_schema"

    @abstractmethod
    def chat(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any] | None = None,
        on_token: Callable[[str], None] | None = None,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        wall_timeout_s: float | None = None,
    ) -> ChatReply:
        """Send ``messages`` ([{role, content}]); ask for JSON matching ``schema`` if given.

        ``on_token(piece)`` receives streamed pieces of the reply as they arrive. Raises
        ``LLMUnavailable`` for transport failures and server errors, ``LLMTimeout`` past
        ``wall_timeout_s``, ``ContextOverflow`` when the server refuses the prompt's length.
        """

    # -- negotiation hooks -----------------------------------------------------------------
    def list_models(self) -> list[str]:
        """The models the server serves; raises ``LLMUnavailable`` when it cannot be reached."""
        return []

    def server_context(self) -> tuple[int | None, str]:
        """The context length the server reports (and where from), or ``(None, "")``."""
        return None, ""

    def count_tokens(self, text: str) -> int | None:
        """Tokens in ``text`` by the server's tokenizer endpoint, or None when it has none."""
        return None

    def negotiate(self, context_length: int = 0, probe: bool = True) -> Capabilities:
        """Find out (once; later calls return the same result) reachability, model, context
        length and the structured-output form; see the module doc. ``context_length`` > 0 is
        the configured value, used when the server does not report one (a configured value
        smaller than the server's wins: it is the user's limit). Raises ``ModelMissing`` when
        the server answers but does not serve the model."""
        if self.caps is not None:
            return self.caps
        t0 = time.perf_counter()
        caps = Capabilities(spec=self.spec, model=self.model, url=self.url)
        try:
            models = self.list_models()
            caps.reachable = True
        except LLMUnavailable as exc:
            caps.error = str(exc)
            caps.probe_s = round(time.perf_counter() - t0, 3)
            return caps  # not remembered: a later negotiate() tries again
        if models:
            caps.model_present = self.model in models or any(m.split(":")[0] == self.model for m in models)
        srv_ctx, source = self.server_context()
        if srv_ctx:
            caps.context_length, caps.context_source = srv_ctx, ("num_ctx sent" if source == "num_ctx sent"
                                                                 else "server")
            if context_length and context_length < srv_ctx:
                caps.context_length, caps.context_source = context_length, "config"
                caps.notes.append(f"the server's context is {srv_ctx} ({source}); the config limits it")
        elif context_length:
            caps.context_length, caps.context_source = context_length, "config"
        try:
            caps.tokenizer = self.count_tokens("probe") is not None
        except LLMError:
            caps.tokenizer = False
        if probe:
            if not self._probe_json(caps):
                caps.probe_s = round(time.perf_counter() - t0, 3)
                return caps  # the server stopped answering: not remembered, tried again later
        else:
            caps.json_mode = self.json_mode
        caps.probe_s = round(time.perf_counter() - t0, 3)
        self.caps = caps
        return caps

    def _modes(self) -> tuple[str, ...]:
        return JSON_MODES

    def _probe_json(self, caps: Capabilities) -> bool:
        """Find the structured-output form (sets ``caps.json_mode``). False when the server
        stopped answering during the probe (a refused connection, a broken stream, a timeout:
        not a refusal of the form); ``caps`` then says so and the form stays unknown."""
        last = ""
        initial = self.json_mode
        for mode in self._modes():
            self.json_mode = mode
            try:
                r = self.chat(_PROBE_MESSAGES, schema=_PROBE_SCHEMA, max_tokens=24, temperature=0.0,
                              wall_timeout_s=60.0)
            except ModelMissing:
                raise
            except (LLMUnavailable, ContextOverflow) as exc:
                last = str(exc)
                if _model_missing_text(last):
                    raise ModelMissing(self._missing_message([])) from None
                if isinstance(exc, LLMUnavailable) and exc.status is None:
                    # no answer at all (e.g. the server crashed on its first generation): the
                    # next form would fail the same way; say what happened instead of "plain"
                    self.json_mode = initial
                    caps.reachable = False
                    caps.error = f"the server stopped answering during the JSON probe ({mode}): {last}"
                    return False
                caps.notes.append(f"{mode}: refused ({last[:200]})")
                continue
            if caps.model_present is False:
                caps.notes.append(f"{self.model!r} is not in the server's model list, but the server answered")
                caps.model_present = True
            if mode == "plain":
                break
            try:
                extract_json(r.text)
            except ValueError:
                caps.notes.append(f"{mode}: accepted but the reply was not JSON")
                continue
            break
        else:
            caps.json_mode = "plain"
            self.json_mode = "plain"
            if last:
                caps.error = last
            return True
        caps.json_mode = self.json_mode
        caps.notes.extend(getattr(self, "format_notes", []))
        if caps.model_present is False:
            raise ModelMissing(self._missing_message([]))
        return True

    def _missing_message(self, models: list[str]) -> str:
        return f"{self.url} does not serve the model {self.model!r}"

    def close(self) -> None:  # pragma: no cover - trivial
        """Release connections."""


def _one_line(text: str, n: int = 300) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _model_missing_text(text: str) -> bool:
    t = (text or "").lower()
    return ("model" in t and ("not found" in t or "does not exist" in t or "no such model" in t)
            and ("404" in t or "not found" in t))


def _timeout(timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))


def _deadline(wall_timeout_s: float | None) -> float | None:
    return None if not wall_timeout_s else time.monotonic() + float(wall_timeout_s)


class OllamaBackend(ChatBackend):
    """Ollama through the official client (streaming, ``format`` = JSON schema or ``"json"``)."""

    def __init__(
        self,
        model: str,
        host: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        options: dict[str, Any] | None = None,
        think: bool | None = None,
    ) -> None:
        import ollama

        self.model = model
        self.host = host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
        self.url = self.host
        self.spec = f"ollama:{model}"
        self.options = dict(options or {})
        self.think = think
        self.timeout_s = timeout_s
        self.json_mode = "json_schema"
        self._client = ollama.Client(host=self.host, timeout=_timeout(timeout_s))

    def _modes(self) -> tuple[str, ...]:
        return ("json_schema", "json_object", "plain")

    def list_models(self) -> list[str]:
        """Model names from ``/api/tags``."""
        import ollama

        try:
            return [m.model for m in self._client.list().models if m.model]
        except ollama.ResponseError as exc:
            raise LLMUnavailable(f"Ollama at {self.host} answered {exc.status_code}: {exc.error}",
                                 status=exc.status_code) from None
        except (ConnectionError, httpx.HTTPError) as exc:
            raise LLMUnavailable(f"cannot reach Ollama at {self.host}: {exc}") from None

    def server_context(self) -> tuple[int | None, str]:
        """``num_ctx`` from the model's parameters (``show``), else the configured
        ``options["num_ctx"]``; capped by the model's trained context length."""
        import ollama

        try:
            info = self._client.show(self.model)
        except ollama.ResponseError as exc:
            if exc.status_code == 404 and "model" in str(exc.error).lower():
                raise ModelMissing(self._missing_message([])) from None
            return None, ""
        except (ConnectionError, httpx.HTTPError):
            return None, ""
        trained = None
        for k, v in (getattr(info, "modelinfo", None) or {}).items():
            if k.endswith(".context_length") and isinstance(v, int):
                trained = v
        num_ctx = self.options.get("num_ctx")
        m = re.search(r"^\s*num_ctx\s+(\d+)", getattr(info, "parameters", None) or "", re.M)
        if num_ctx is None and m:
            num_ctx = int(m.group(1))
        if num_ctx:
            return (min(int(num_ctx), trained) if trained else int(num_ctx)), "num_ctx"
        # nothing set: Ollama would run its small default context and cut longer prompts
        # silently; ask for a known one instead (sent as num_ctx with every call)
        ctx = min(trained or OLLAMA_NUM_CTX, OLLAMA_NUM_CTX)
        self.options["num_ctx"] = ctx
        return ctx, "num_ctx sent"

    def negotiate(self, context_length: int = 0, probe: bool = True) -> Capabilities:
        """As the base class; a configured ``context_length`` is also sent as ``num_ctx`` (Ollama
        otherwise runs its default context and silently cuts longer prompts)."""
        if context_length and "num_ctx" not in self.options:
            self.options["num_ctx"] = int(context_length)
        return super().negotiate(context_length, probe)

    def _missing_message(self, models: list[str]) -> str:
        return (f"Ollama at {self.host} has no model {self.model!r}: pull it with `ollama pull {self.model}` "
                "or name one of `ollama list`")

    def chat(self, messages, schema=None, on_token=None, *, max_tokens=None, temperature=None,
             wall_timeout_s=None) -> ChatReply:
        import ollama

        t0 = time.perf_counter()
        deadline = _deadline(wall_timeout_s)
        pieces: list[str] = []
        tokens_in = tokens_out = None
        done = False
        finish = None
        fmt: Any = None
        if schema is not None and self.json_mode == "json_schema":
            fmt = schema
        elif schema is not None and self.json_mode in ("json_object", "json_object+schema"):
            fmt = "json"
        options = dict(self.options)
        if max_tokens:
            options["num_predict"] = int(max_tokens)
        if temperature is not None:
            options["temperature"] = float(temperature)
        try:
            stream = self._client.chat(model=self.model, messages=messages, stream=True, format=fmt,
                                       options=options or None, think=self.think)
            for part in stream:
                piece = (part.message.content or "") if part.message is not None else ""
                if piece:
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
                if part.done:
                    done = True
                    finish = getattr(part, "done_reason", None)
                    tokens_in = part.prompt_eval_count
                    tokens_out = part.eval_count
                if deadline is not None and time.monotonic() > deadline and not done:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
                    raise LLMTimeout(f"Ollama at {self.host} did not finish within {wall_timeout_s:.0f} s "
                                     f"({len(''.join(pieces))} characters received)", "".join(pieces))
        except ollama.ResponseError as exc:
            if exc.status_code == 404 and "model" in str(exc.error).lower():
                raise ModelMissing(self._missing_message([])) from None
            raise LLMUnavailable(f"Ollama at {self.host} answered {exc.status_code}: {exc.error}",
                                 status=exc.status_code) from None
        except ConnectionError as exc:
            raise LLMUnavailable(f"cannot reach Ollama at {self.host}: {exc}") from None
        except httpx.TimeoutException:
            raise LLMTimeout(f"Ollama at {self.host} did not answer in time", "".join(pieces)) from None
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise LLMUnavailable(f"Ollama at {self.host} failed mid-reply: {type(exc).__name__}: {exc}",
                                 "".join(pieces)) from None
        if not done:
            raise LLMUnavailable(f"Ollama at {self.host} closed the stream before the reply was complete",
                                 "".join(pieces))
        return ChatReply("".join(pieces), self.model, time.perf_counter() - t0, tokens_in, tokens_out, finish)

    def close(self) -> None:
        try:
            self._client._client.close()  # the httpx client inside
        except Exception:
            pass


class OpenAIBackend(ChatBackend):
    """Any OpenAI-compatible chat-completions endpoint, through httpx (SSE streaming)."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream: bool = True,
    ) -> None:
        self.model = model
        base = base_url.rstrip("/")
        if not base.endswith("/v1") and "/v1/" not in base + "/":
            base = base + "/v1"
        self.base_url = base
        self.url = base
        self.root = base[: -len("/v1")] if base.endswith("/v1") else base
        self.spec = f"openai:{model}@{base_url}"
        self.stream = stream
        self.timeout_s = timeout_s
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._headers = headers
        self._client = httpx.Client(timeout=_timeout(timeout_s), headers=headers)
        self.json_mode = "json_schema"
        #: structured-output forms the server refused during calls (kept in the capabilities)
        self.format_notes: list[str] = []
        #: which tokenizer endpoint answered ("" = none found yet, None = none exists)
        self._tokenizer: str | None = ""

    # -- negotiation -----------------------------------------------------------------------
    def _get(self, url: str) -> httpx.Response:
        try:
            return self._client.get(url, timeout=_timeout(min(10.0, self.timeout_s)))
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from None

    def list_models(self) -> list[str]:
        """Model ids from ``/v1/models`` (empty when the server has no such endpoint)."""
        r = self._get(self.base_url + "/models")
        if r.status_code >= 500:
            raise LLMUnavailable(f"{self.base_url}/models answered {r.status_code}: {r.text}",
                                 status=r.status_code)
        if r.status_code >= 400:
            return []
        try:
            data = r.json().get("data") or []
            self._models_meta = {str(d.get("id")): d for d in data if isinstance(d, dict)}
            return [str(d.get("id")) for d in data if isinstance(d, dict) and d.get("id")]
        except (ValueError, AttributeError):
            return []

    def server_context(self) -> tuple[int | None, str]:
        """llama.cpp's ``/props`` (``n_ctx``), else ``meta.n_ctx`` of the model in ``/v1/models``,
        else Ollama's ``/api/show`` behind its ``/v1`` (``num_ctx``)."""
        try:
            r = self._get(self.root + "/props")
            if r.status_code == 200:
                d = r.json()
                n = (d.get("default_generation_settings") or {}).get("n_ctx") or d.get("n_ctx")
                if isinstance(n, int) and n > 0:
                    return n, "/props"
        except (LLMUnavailable, ValueError, AttributeError):
            pass
        meta = (getattr(self, "_models_meta", {}) or {}).get(self.model, {}).get("meta") or {}
        for key in ("n_ctx", "context_length", "max_model_len"):
            if isinstance(meta.get(key), int):
                return meta[key], f"/v1/models meta.{key}"
        info = (getattr(self, "_models_meta", {}) or {}).get(self.model, {})
        if isinstance(info.get("max_model_len"), int):  # vLLM
            return info["max_model_len"], "/v1/models max_model_len"
        try:
            r = self._client.post(self.root + "/api/show", json={"model": self.model},
                                  timeout=_timeout(min(10.0, self.timeout_s)))
            if r.status_code == 200:
                d = r.json()
                m = re.search(r"^\s*num_ctx\s+(\d+)", d.get("parameters") or "", re.M)
                if m:
                    return int(m.group(1)), "Ollama num_ctx"
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        return None, ""

    def count_tokens(self, text: str) -> int | None:
        """llama-cpp-python's ``/extras/tokenize/count`` or llama.cpp's ``/tokenize``."""
        if self._tokenizer is None:
            return None
        tries = [self._tokenizer] if self._tokenizer else ["/extras/tokenize/count", "/tokenize"]
        for path in tries:
            body = {"input": text, "model": self.model} if path.startswith("/extras") else {"content": text}
            try:
                r = self._client.post(self.root + path, json=body, timeout=_timeout(min(10.0, self.timeout_s)))
            except httpx.HTTPError:
                return None
            if r.status_code != 200:
                continue
            try:
                d = r.json()
            except ValueError:
                continue
            n = d.get("count") if "count" in d else (len(d["tokens"]) if isinstance(d.get("tokens"), list) else None)
            if isinstance(n, int):
                self._tokenizer = path
                return n
        if not self._tokenizer:
            self._tokenizer = None
        return None

    def _missing_message(self, models: list[str]) -> str:
        listed = list(getattr(self, "_models_meta", {}) or {})
        return (f"{self.base_url} does not serve the model {self.model!r}"
                + (f"; it serves {', '.join(listed)}" if listed else ""))

    # -- calls -------------------------------------------------------------------------------
    def _response_format(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None or self.json_mode == "plain":
            return None
        if self.json_mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": False}}
        if self.json_mode == "json_object+schema":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_object"}

    def chat(self, messages, schema=None, on_token=None, *, max_tokens=None, temperature=None,
             wall_timeout_s=None) -> ChatReply:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
        rf = self._response_format(schema)
        if rf is not None:
            body["response_format"] = rf
        if max_tokens:
            body["max_tokens"] = int(max_tokens)
        if temperature is not None:
            body["temperature"] = float(temperature)
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        deadline = _deadline(wall_timeout_s)
        while True:
            try:
                try:
                    return self._do(body, on_token, deadline, wall_timeout_s)
                except _EmptyStream:
                    # llama-cpp-python fails a streamed request (e.g. a prompt over its context)
                    # by closing an empty stream; asked again without streaming it answers with
                    # its error (cheap: such errors come before any evaluation)
                    plain = {k: v for k, v in body.items() if k != "stream_options"}
                    plain["stream"] = False
                    # the server dropped that connection: start a fresh pool
                    self._client.close()
                    self._client = httpx.Client(timeout=_timeout(self.timeout_s), headers=self._headers)
                    return self._do(plain, on_token, deadline, wall_timeout_s)
            except _FormatRefused as exc:
                # the server refuses this structured-output form: step down to the next one
                # (remembered) and ask again; plain text is the last resort
                modes = list(JSON_MODES)
                i = modes.index(self.json_mode) if self.json_mode in modes else len(modes) - 1
                if schema is None or i >= len(modes) - 1:
                    raise LLMUnavailable(str(exc), status=exc.status) from None
                self.json_mode = modes[i + 1]
                self.format_notes.append(f"{modes[i]}: refused ({_one_line(str(exc), 300)})")
                if self.caps is not None:
                    self.caps.json_mode = self.json_mode
                    self.caps.notes.append(f"stepped down to {self.json_mode}: {exc}")
                rf = self._response_format(schema)
                if rf is None:
                    body.pop("response_format", None)
                else:
                    body["response_format"] = rf

    def _do(self, body: dict[str, Any], on_token, deadline: float | None, wall: float | None) -> ChatReply:
        url = self.base_url + "/chat/completions"
        t0 = time.perf_counter()
        timeout = _timeout(min(self.timeout_s, wall) if wall else self.timeout_s)
        pieces: list[str] = []  # what the stream delivered (kept by a timeout or a broken stream)
        try:
            if not body.get("stream"):
                r = self._client.post(url, json=body, timeout=timeout)
                self._raise_for(r)
                data = r.json()
                choice = data["choices"][0]
                text = choice["message"].get("content") or ""
                if on_token is not None and text:
                    on_token(text)
                usage = data.get("usage") or {}
                return ChatReply(text, self.model, time.perf_counter() - t0, usage.get("prompt_tokens"),
                                 usage.get("completion_tokens"), choice.get("finish_reason"))
            usage: dict[str, Any] = {}
            finished = False
            finish = None
            data_lines = 0
            with self._client.stream("POST", url, json=body, timeout=timeout) as r:
                if r.status_code >= 400:
                    r.read()
                self._raise_for(r)
                for line in r.iter_lines():
                    if deadline is not None and time.monotonic() > deadline:
                        raise LLMTimeout(f"{self.base_url} did not finish within {wall:.0f} s "
                                         f"({len(''.join(pieces))} characters received)", "".join(pieces))
                    line = line.strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    data_lines += 1
                    if payload == "[DONE]":
                        finished = True
                        break
                    chunk = json.loads(payload)
                    if isinstance(chunk, dict) and chunk.get("error"):
                        raise _stream_error(self.base_url, chunk["error"], payload)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            pieces.append(piece)
                            if on_token is not None:
                                on_token(piece)
                        if choice.get("finish_reason"):
                            finished = True
                            finish = choice["finish_reason"]
            if not finished and data_lines == 0:
                raise _EmptyStream()
            if not finished:
                raise LLMUnavailable(f"{self.base_url} closed the stream before the reply was complete",
                                     "".join(pieces))
            return ChatReply("".join(pieces), self.model, time.perf_counter() - t0,
                             usage.get("prompt_tokens"), usage.get("completion_tokens"), finish)
        except httpx.TimeoutException:
            raise LLMTimeout(f"{self.base_url} did not answer within "
                             f"{(min(self.timeout_s, wall) if wall else self.timeout_s):.0f} s",
                             "".join(pieces)) from None
        except httpx.ConnectError as exc:
            raise LLMUnavailable(f"cannot reach {self.base_url}: {exc}") from None
        except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError, AttributeError) as exc:
            raise LLMUnavailable(f"{self.base_url} failed mid-reply: {type(exc).__name__}: {exc}",
                                 "".join(pieces)) from None

    def _raise_for(self, r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        text = r.text  # whole: the transcript keeps the server's own words
        if _is_context_error(r.status_code, text):
            raise ContextOverflow(f"{self.base_url} answered {r.status_code}: {text}", _context_from_error(text))
        if r.status_code == 404 and "model" in text.lower():
            raise ModelMissing(f"{self._missing_message([])} (answered 404: {text})")
        low = text.lower()
        if r.status_code in (400, 422, 500) and ("response_format" in low or "json_schema" in low
                                                 or "json_object" in low):
            raise _FormatRefused(f"{self.base_url} answered {r.status_code}: {text}", r.status_code)
        raise LLMUnavailable(f"{self.base_url} answered {r.status_code}: {text}", status=r.status_code)

    def close(self) -> None:
        self._client.close()


class _EmptyStream(Exception):
    """The server closed a streamed reply without sending anything."""


class _FormatRefused(Exception):
    """The server refused the request's ``response_format`` (HTTP ``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _stream_error(base_url: str, err: Any, payload: str) -> LLMError:
    msg = err.get("message") if isinstance(err, dict) else str(err)
    if _is_context_error(400, payload):
        return ContextOverflow(f"{base_url} sent an error in the stream: {payload}", _context_from_error(payload))
    return LLMUnavailable(f"{base_url} sent an error in the stream: {msg} ({payload})", status=200)


@dataclass(frozen=True)
class LLMSpec:
    """A parsed ``--llm`` value: ``builtin``, ``ollama:MODEL[@HOST]`` or ``openai:MODEL@URL``."""

    backend: str
    model: str = ""
    url: str | None = None

    def __str__(self) -> str:
        if self.backend == "builtin":
            return "builtin"
        return f"{self.backend}:{self.model}" + (f"@{self.url}" if self.url else "")


def parse_llm_spec(spec: str) -> LLMSpec:
    """Parse ``builtin | ollama:MODEL[@HOST] | openai:MODEL@URL``; ``ValueError`` if malformed."""
    s = (spec or "").strip()
    if s in ("", "builtin"):
        return LLMSpec("builtin")
    backend, sep, rest = s.partition(":")
    if not sep or backend not in ("ollama", "openai") or not rest:
        raise ValueError(
            f"--llm {spec!r} is not understood: use 'builtin', 'ollama:MODEL' (host from OLLAMA_HOST "
            "or the lab's config), 'ollama:MODEL@HOST' or 'openai:MODEL@URL' (an OpenAI-compatible "
            "endpoint such as http://127.0.0.1:8000/v1)."
        )
    # split on the last '@' that starts a URL/host, so model names may not contain '@'
    model, at, url = rest.partition("@")
    if not model:
        raise ValueError(f"--llm {spec!r} names no model.")
    if backend == "openai" and not url:
        raise ValueError(f"--llm {spec!r}: an OpenAI-compatible backend needs its URL, as openai:MODEL@URL.")
    return LLMSpec(backend, model, url or None)


def make_backend(spec: str | LLMSpec, host: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> ChatBackend | None:
    """A backend for ``spec``, or ``None`` for ``builtin``. ``host`` is the default Ollama host."""
    s = parse_llm_spec(spec) if isinstance(spec, str) else spec
    if s.backend == "builtin":
        return None
    if s.backend == "ollama":
        return OllamaBackend(s.model, host=s.url or host, timeout_s=timeout_s)
    return OpenAIBackend(s.model, s.url or "", timeout_s=timeout_s)


@dataclass
class CallPolicy:
    """How one role's calls are bounded (see ``agents.llm_session`` for where the values come from).

    ``max_tokens``: the reply's limit (also reserved in the context). ``temperature`` for the
    first attempt, ``correction_temperature`` for the correction round (None: the server's
    default). ``wall_timeout_s``: per call, covering slow streams. ``context_length``: the
    server's context (None: unknown, no fitting). ``chars_per_token``: for estimates, learned
    from the server's usage counts as calls come back.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    correction_temperature: float | None = None
    wall_timeout_s: float | None = None
    context_length: int | None = None
    chars_per_token: float = 3.0
    margin_tokens: int = 48

    def reply_room(self) -> int | None:
        """Tokens the reply may use: ``max_tokens``, never more than half the context."""
        if self.context_length and self.max_tokens:
            return max(64, min(self.max_tokens, self.context_length // 2))
        return self.max_tokens

    def prompt_room(self) -> int | None:
        """Tokens the prompt may use (context minus the reply's room and a margin), or None."""
        if not self.context_length:
            return None
        return max(32, self.context_length - (self.reply_room() or 0) - self.margin_tokens)

    def count(self, messages: list[dict[str, str]]) -> int:
        """The estimated prompt tokens of ``messages`` (text plus a chat-template allowance)."""
        return sum(estimate_tokens(m.get("content", ""), self.chars_per_token) + 8 for m in messages)


@dataclass
class CallRecorder:
    """Keeps the transcript of one experiment and streams its calls as events.

    ``transcript`` entries: {role, model, prompt, reply, duration_s, tokens_in, tokens_out,
    tokens_estimated, ok, error, attempt, finish_reason, trimmed, partial}; a failed call's
    ``reply`` is what the model streamed before the failure (``partial`` true when any).
    ``steps``: one entry per agent step, ``{role, by, spec, reason}`` where ``by`` is ``llm``
    (the model's answer was used), ``fallback`` (the built-in agent answered after the model
    could not) or ``builtin`` (the role is configured built-in). ``emit`` receives ``AgentMessage``, ``AgentStep`` and
    ``Warning`` events.
    """

    exp_id: str | None = None
    emit: Callable[[Event], None] | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def event(self, ev: Event) -> None:
        """Emit ``ev`` (tagged with this experiment) if anyone listens."""
        if ev.exp_id is None:
            ev.exp_id = self.exp_id
        if self.emit is not None:
            self.emit(ev)

    def warn(self, message: str, source: str = "llm") -> None:
        """A visible warning."""
        self.event(Warning(message=message, source=source))

    def step(self, role: str, by: str, spec: str, reason: str = "") -> None:
        """Count one agent step: answered by ``llm``, ``fallback`` or ``builtin``."""
        self.steps.append({"role": role, "by": by, "spec": spec, "reason": reason})
        self.event(AgentStep(role=role, by=by, spec=spec, reason=reason))

    def record(self, role: str, model: str, prompt: str, reply: str, duration_s: float,
               tokens_in: int | None, tokens_out: int | None, ok: bool = True,
               error: str | None = None, attempt: int = 1, prompt_in_event: bool = True,
               **more: Any) -> None:
        """Keep one call (a real LLM call or a builtin agent's step). The event repeats the
        prompt unless ``prompt_in_event`` is False (it was already sent as a ``request``).
        ``more`` (``tokens_estimated``, ``finish_reason``, ``trimmed``…) goes into the entry."""
        entry = {
            "role": role, "model": model, "prompt": prompt, "reply": reply,
            "duration_s": round(float(duration_s), 4), "tokens_in": tokens_in,
            "tokens_out": tokens_out, "ok": ok, "error": error, "attempt": attempt,
        }
        entry.update({k: v for k, v in more.items() if v is not None})
        self.transcript.append(entry)
        self.event(AgentMessage(role=role, model=model, message="reply" if ok else "error",
                                text=reply if ok else (error or reply),
                                prompt=prompt if prompt_in_event else "",
                                duration_s=duration_s, tokens_in=tokens_in, tokens_out=tokens_out,
                                attempt=attempt))


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)  # a broken schema is our bug: SchemaError, not a model's fault
    return cls(schema)


def _field(path: Any) -> str:
    """A JSON path as ``code``, ``items[0].name``; ``the reply`` for the top level."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "the reply"


def _shown(value: Any, n: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return _one_line(text, n)


_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "object": "an object",
               "array": "an array", "boolean": "true or false", "null": "null"}


def _allowed(values: list[Any]) -> str:
    nums = bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if nums and values == list(range(min(values), max(values) + 1)):
        return f"an integer from {min(values)} to {max(values)}"
    return "one of " + _shown(values, 80)


def _problem(err: Any) -> str:
    where, kw, want, got = _field(err.absolute_path), err.validator, err.validator_value, err.instance
    sub = err.schema if isinstance(err.schema, dict) else {}
    if kw == "type":
        if isinstance(sub.get("enum"), list):  # say what is allowed, not only the type
            return f"{where} must be {_allowed(sub['enum'])} (got {_shown(got)})"
        kinds = [want] if isinstance(want, str) else list(want)
        return f"{where} must be {' or '.join(_TYPE_WORDS.get(k, k) for k in kinds)} (got {_shown(got)})"
    if kw == "enum":
        return f"{where} must be {_allowed(list(want))} (got {_shown(got)})"
    if kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
                 "exclusiveMaximum": "less than"}[kw]
        return f"{where} must be {words} {want} (got {_shown(got)})"
    if kw == "minLength" and want == 1:
        return f"{where} is empty"
    return f"{where}: {_one_line(err.message, 160)}"


def schema_error(obj: Any, schema: dict[str, Any], limit: int = 3) -> str | None:
    """None when ``obj`` matches the JSON ``schema`` (validated with ``jsonschema``, the schema's
    own draft or 2020-12), else one line naming each problem by its field path, e.g.
    ``the reply misses the required field(s) motivation, code`` or ``performance must be an
    integer from 1 to 10 (got 11)``: missing fields first, then one problem for each of the
    first ``limit`` other fields in field order (``(and N more)`` for the rest). Raises ``jsonschema.SchemaError``
    for a schema that is itself invalid."""
    errors = list(_validator(json.dumps(schema, sort_keys=True)).iter_errors(obj))
    if not errors:
        return None
    missing: list[str] = []
    others: list[Any] = []
    for e in errors:
        if e.validator == "required" and isinstance(e.instance, dict):
            base = _field(e.absolute_path)
            prefix = "" if base == "the reply" else base + "."
            missing += [prefix + k for k in e.validator_value if k not in e.instance]
        else:
            others.append(e)
    # one problem per field: its type first, then its allowed values, then the rest
    rank = {"type": 0, "enum": 1, "const": 1}
    others.sort(key=lambda e: ([str(p) for p in e.absolute_path], rank.get(e.validator, 2)))
    first: dict[str, Any] = {}
    for e in others:
        first.setdefault(_field(e.absolute_path), e)
    shown = list(first.values())
    missing = list(dict.fromkeys(missing))  # jsonschema reports each missing field once per check
    parts = [f"the reply misses the required field(s) {', '.join(missing)}"] if missing else []
    parts += [_problem(e) for e in shown[:limit]]
    if len(shown) > limit:
        parts.append(f"(and {len(shown) - limit} more)")
    return "; ".join(parts)


_FENCE = re.compile(r"^```(?:json|JSON)?\s*\n?(.*?)\n?```\s*$", re.S)


def _loads(text: str) -> Any:
    """``json.loads``, then again with ``strict=False``: raw control characters (newlines, tabs)
    inside strings are invalid JSON, but small models put them in code fields all the time and
    the meaning is unambiguous. Raises the strict parse's ``JSONDecodeError`` if both fail."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as strict:
        try:
            return json.loads(text, strict=False)
        except json.JSONDecodeError:
            raise strict from None


def extract_json(text: str) -> dict[str, Any]:
    """The JSON object in a reply (plain, fenced, or the outermost ``{...}``), raw control
    characters inside its strings accepted; ``ValueError`` if none."""
    t = (text or "").strip()
    m = _FENCE.match(t)
    if m:
        t = m.group(1).strip()
    # drop a leading <think>...</think> block some reasoning models emit
    t = re.sub(r"^<think>.*?</think>\s*", "", t, flags=re.S)
    try:
        obj = _loads(t)
    except json.JSONDecodeError as first:
        i, j = t.find("{"), t.rfind("}")
        if i < 0 or j <= i:
            raise ValueError(f"the reply is not JSON ({first.msg} at position {first.pos})") from None
        try:
            obj = _loads(t[i : j + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"the reply is not JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"the reply is JSON but not an object (got {type(obj).__name__})")
    return obj


def _prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def _fit(prompt: Any, policy: CallPolicy, extra: list[dict[str, str]] | None = None,
         room: int | None = None) -> tuple[list[dict[str, str]], list[str]]:
    """Messages of ``prompt`` (a ``Prompt`` or a message list) within the policy's prompt room,
    with ``extra`` messages appended; returns (messages, what was trimmed)."""
    extra = list(extra or [])
    room = room if room is not None else policy.prompt_room()
    if hasattr(prompt, "fit"):
        reserve = policy.count(extra) if extra else 0
        if room is None:
            return prompt.messages() + extra, []
        msgs, trimmed = prompt.fit(max(16, room - reserve), policy.count)
        if policy.count(msgs) > room - reserve:
            raise ContextOverflow(f"the prompt does not fit the context of {policy.context_length} tokens "
                                  f"even after trimming ({', '.join(trimmed)})", policy.context_length)
        return msgs + extra, trimmed
    msgs = list(prompt) + extra
    if room is not None and policy.count(msgs) > room:
        # a plain message list: cut the longest user message in the middle
        over = policy.count(msgs) - room
        i = max((k for k, m in enumerate(msgs) if m["role"] == "user"),
                key=lambda k: len(msgs[k]["content"]), default=None)
        if i is None:
            raise ContextOverflow(f"the prompt does not fit the context of {policy.context_length} tokens",
                                  policy.context_length)
        text = msgs[i]["content"]
        cut = int(over * policy.chars_per_token) + 64
        if cut >= len(text):
            raise ContextOverflow(f"the prompt does not fit the context of {policy.context_length} tokens",
                                  policy.context_length)
        keep = len(text) - cut
        msgs[i] = {"role": "user", "content": text[: keep // 2] + "\n…[trimmed to fit the context]…\n"
                   + text[len(text) - keep // 2:]}
        return msgs, [f"{cut} characters of the {msgs[i]['role']} message"]
    return msgs, []


def _correction(error: str, schema: dict[str, Any]) -> str:
    return (f"Your previous reply could not be used: {error}.\nAnswer again with ONE JSON object and nothing "
            f"else, matching this JSON schema:\n{json.dumps(schema, separators=(',', ':'))}")


def chat_json(
    backend: ChatBackend,
    role: str,
    messages: Any,
    schema: dict[str, Any],
    recorder: CallRecorder | None = None,
    validate: Callable[[dict[str, Any]], str | None] | None = None,
    retries: int = 2,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    policy: CallPolicy | None = None,
) -> dict[str, Any]:
    """Ask ``backend`` for a JSON object matching ``schema`` and return it.

    ``messages`` is a chat (list of messages) or an ``agents.prompts.Prompt`` (fitted into the
    context by dropping its low-priority sections; what was dropped is kept in the transcript
    entry's ``trimmed``). Transport failures are retried ``retries`` times with exponential
    backoff, then ``LLMUnavailable`` is raised (a wall-clock timeout is not retried: the next
    try would be as slow). A prompt the server finds too long is re-fitted to the context the
    server names (twice at most). A reply that is not JSON, does not match ``schema``
    (:func:`schema_error`: missing fields, wrong types, values out of range) or fails
    ``validate`` (which returns an error message or None) gets one correction round: the
    fitted prompt plus the error and the schema (never the unusable reply), at the policy's
    correction temperature; if that reply is bad too, ``MalformedReply`` is raised. Every call,
    failed or not, is recorded in ``recorder`` with its wall time. Error messages do not repeat
    the role (the caller adds it once).
    """
    rec = recorder or CallRecorder()
    pol = policy or CallPolicy()
    max_tokens = pol.reply_room()
    last_error = ""
    correction: list[dict[str, str]] | None = None
    finish: str | None = None
    attempt = 1
    refits = 0
    while attempt <= 2:
        try:
            msgs, trimmed = _fit(messages, pol, correction)
        except ContextOverflow as exc:
            rec.record(role, backend.spec, "", "", 0.0, None, None, ok=False, error=str(exc), attempt=attempt,
                       prompt_in_event=False)
            raise
        prompt = _prompt_text(msgs)
        rec.event(AgentMessage(role=role, model=backend.spec, message="request", prompt=prompt, attempt=attempt))

        def _delta(piece: str, attempt: int = attempt) -> None:
            rec.event(AgentMessage(role=role, model=backend.spec, message="delta", text=piece, attempt=attempt))

        temperature = pol.temperature if attempt == 1 else pol.correction_temperature
        reply: ChatReply | None = None
        overflow: ContextOverflow | None = None
        for i in range(retries + 1):
            t0 = time.perf_counter()
            try:
                reply = backend.chat(msgs, schema=schema, on_token=_delta, max_tokens=max_tokens,
                                     temperature=temperature, wall_timeout_s=pol.wall_timeout_s)
                break
            except ContextOverflow as exc:
                rec.record(role, backend.spec, prompt, "", time.perf_counter() - t0, None, None, ok=False,
                           error=str(exc), attempt=attempt, prompt_in_event=False, trimmed=trimmed or None)
                overflow = exc
                break
            except LLMUnavailable as exc:
                # what the model streamed before the failure is its attempt: kept in the transcript
                rec.record(role, backend.spec, prompt, exc.partial, time.perf_counter() - t0, None, None,
                           ok=False, error=str(exc), attempt=attempt, prompt_in_event=False,
                           trimmed=trimmed or None, partial=True if exc.partial else None)
                if i < retries and not isinstance(exc, LLMTimeout):
                    sleep(backoff_s * (2**i))
                    continue
                if isinstance(exc, LLMTimeout):
                    raise
                raise LLMUnavailable(f"{exc} (after {retries + 1} tries)", exc.partial, exc.status) from None
        if overflow is not None:
            refits += 1
            known = overflow.context_length
            current = pol.context_length or ASSUMED_CONTEXT * 4
            if refits > 2:
                raise overflow
            new = known if known and known < current else int(current * 0.75)
            pol.context_length = new
            max_tokens = pol.reply_room()
            if backend.caps is not None:
                backend.caps.context_length, backend.caps.context_source = new, "server error"
            continue  # same attempt, refitted
        assert reply is not None
        tokens_in, tokens_out, estimated = reply.tokens_in, reply.tokens_out, None
        if tokens_in is None or tokens_out is None:
            counted_in = backend.count_tokens(prompt) if tokens_in is None else tokens_in
            counted_out = backend.count_tokens(reply.text) if tokens_out is None else tokens_out
            estimated = counted_in is None or counted_out is None or None
            tokens_in = counted_in if counted_in is not None else estimate_tokens(prompt, pol.chars_per_token)
            tokens_out = counted_out if counted_out is not None else estimate_tokens(reply.text, pol.chars_per_token)
        elif tokens_in > 0:
            # learn the tokenizer's ratio so that later prompts are fitted closely
            pol.chars_per_token = max(1.5, min(6.0, len(prompt) / tokens_in * 0.9))
        finish = reply.finish_reason
        error = None
        obj: dict[str, Any] = {}
        try:
            obj = extract_json(reply.text)
            error = schema_error(obj, schema)
            if error is None and validate is not None:
                error = validate(obj)
        except ValueError as exc:
            error = str(exc)
        if error and finish == "length":
            error += f"; the reply was cut at the limit of {max_tokens} tokens (answer shorter)"
        rec.record(role, backend.spec, prompt, reply.text, reply.duration_s, tokens_in, tokens_out,
                   ok=error is None, error=error, attempt=attempt, prompt_in_event=False,
                   tokens_estimated=estimated, finish_reason=finish, trimmed=trimmed or None,
                   temperature=temperature)
        if error is None:
            return obj
        last_error = error
        correction = [{"role": "user", "content": _correction(error, schema)}]
        attempt += 1
    raise MalformedReply(f"the reply stayed unusable after one correction: {last_error}")
