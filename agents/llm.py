"""LLM backends behind one small interface: a chat call with an optional JSON schema, streaming.

* ``OllamaBackend``: the official ``ollama`` client; host from the argument or ``OLLAMA_HOST``;
  structured output through Ollama's ``format`` parameter (a JSON schema).
* ``OpenAIBackend``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp's
  server, LM Studio, Ollama's ``/v1``) through httpx, with ``response_format`` ``json_schema``
  (falling back to ``json_object`` when the server refuses the schema).
* ``builtin``: no LLM; ``make_backend("builtin")`` returns ``None`` and each agent uses its
  rule-based counterpart.

``chat_json`` is what the agents call: it retries an unreachable or failing server with backoff
(then raises ``LLMUnavailable`` so the role falls back to builtin for that step), sends a malformed
reply (not JSON, missing fields, code that does not parse) back to the model once with the error
(then raises ``MalformedReply``), and keeps every call in a ``CallRecorder``: role, model, prompt,
reply, duration and token counts, in the transcript and as ``AgentMessage`` events.
"""

from __future__ import annotations

import json
import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from agents.events import AgentMessage, Event, Warning

__all__ = [
    "LLMError",
    "LLMUnavailable",
    "MalformedReply",
    "ChatReply",
    "ChatBackend",
    "OllamaBackend",
    "OpenAIBackend",
    "LLMSpec",
    "parse_llm_spec",
    "make_backend",
    "CallRecorder",
    "extract_json",
    "chat_json",
]

DEFAULT_TIMEOUT_S = 300.0


class LLMError(Exception):
    """Base of the errors an LLM call can end with."""


class LLMUnavailable(LLMError):
    """The server could not be reached, timed out, failed (5xx) or died mid-reply."""


class MalformedReply(LLMError):
    """The model's reply stayed unusable after being sent back once with the error."""


@dataclass
class ChatReply:
    """One completed chat call."""

    text: str
    model: str
    duration_s: float
    tokens_in: int | None = None
    tokens_out: int | None = None


class ChatBackend(ABC):
    """A chat model. ``spec`` is its user-facing name, e.g. ``ollama:qwen3``."""

    model: str
    spec: str

    @abstractmethod
    def chat(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> ChatReply:
        """Send ``messages`` ([{role, content}]); ask for JSON matching ``schema`` if given.

        ``on_token(piece)`` receives streamed pieces of the reply as they arrive. Raises
        ``LLMUnavailable`` for transport failures, timeouts and server errors.
        """

    def close(self) -> None:  # pragma: no cover - trivial
        """Release connections."""


def _timeout(timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))


class OllamaBackend(ChatBackend):
    """Ollama through the official client (streaming, ``format`` = JSON schema)."""

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
        self.spec = f"ollama:{model}"
        self.options = options
        self.think = think
        self._client = ollama.Client(host=self.host, timeout=_timeout(timeout_s))

    def chat(self, messages, schema=None, on_token=None) -> ChatReply:
        import ollama

        t0 = time.perf_counter()
        pieces: list[str] = []
        tokens_in = tokens_out = None
        done = False
        try:
            stream = self._client.chat(
                model=self.model,
                messages=messages,
                stream=True,
                format=schema if schema is not None else None,
                options=self.options,
                think=self.think,
            )
            for part in stream:
                piece = (part.message.content or "") if part.message is not None else ""
                if piece:
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
                if part.done:
                    done = True
                    tokens_in = part.prompt_eval_count
                    tokens_out = part.eval_count
        except ollama.ResponseError as exc:
            raise LLMUnavailable(f"Ollama at {self.host} answered {exc.status_code}: {exc.error}") from None
        except ConnectionError as exc:
            raise LLMUnavailable(f"cannot reach Ollama at {self.host}: {exc}") from None
        except httpx.TimeoutException:
            raise LLMUnavailable(f"Ollama at {self.host} did not answer in time") from None
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise LLMUnavailable(f"Ollama at {self.host} failed mid-reply: {type(exc).__name__}: {exc}") from None
        if not done:
            raise LLMUnavailable(f"Ollama at {self.host} closed the stream before the reply was complete")
        return ChatReply("".join(pieces), self.model, time.perf_counter() - t0, tokens_in, tokens_out)

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
        self.spec = f"openai:{model}@{base_url}"
        self.stream = stream
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._client = httpx.Client(timeout=_timeout(timeout_s), headers=headers)
        #: "json_schema" until the server refuses it, then "json_object".
        self._format_mode = "json_schema"

    def _response_format(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None:
            return None
        if self._format_mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": False}}
        return {"type": "json_object"}

    def chat(self, messages, schema=None, on_token=None) -> ChatReply:
        for _ in range(2):
            body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
            rf = self._response_format(schema)
            if rf is not None:
                body["response_format"] = rf
            if self.stream:
                body["stream_options"] = {"include_usage": True}
            try:
                return self._do(body, on_token)
            except _FormatRefused:
                if self._format_mode == "json_schema" and schema is not None:
                    self._format_mode = "json_object"
                    continue
                raise LLMUnavailable(f"{self.base_url} refused the request") from None
        raise LLMUnavailable(f"{self.base_url} refused the request")  # pragma: no cover

    def _do(self, body: dict[str, Any], on_token) -> ChatReply:
        url = self.base_url + "/chat/completions"
        t0 = time.perf_counter()
        try:
            if not self.stream:
                r = self._client.post(url, json=body)
                self._raise_for(r)
                data = r.json()
                text = data["choices"][0]["message"].get("content") or ""
                if on_token is not None and text:
                    on_token(text)
                usage = data.get("usage") or {}
                return ChatReply(text, self.model, time.perf_counter() - t0,
                                 usage.get("prompt_tokens"), usage.get("completion_tokens"))
            pieces: list[str] = []
            usage: dict[str, Any] = {}
            finished = False
            with self._client.stream("POST", url, json=body) as r:
                if r.status_code >= 400:
                    r.read()
                self._raise_for(r)
                for line in r.iter_lines():
                    line = line.strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        finished = True
                        break
                    chunk = json.loads(payload)
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
            if not finished:
                raise LLMUnavailable(f"{self.base_url} closed the stream before the reply was complete")
            return ChatReply("".join(pieces), self.model, time.perf_counter() - t0,
                             usage.get("prompt_tokens"), usage.get("completion_tokens"))
        except httpx.TimeoutException:
            raise LLMUnavailable(f"{self.base_url} did not answer in time") from None
        except httpx.ConnectError as exc:
            raise LLMUnavailable(f"cannot reach {self.base_url}: {exc}") from None
        except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as exc:
            raise LLMUnavailable(f"{self.base_url} failed mid-reply: {type(exc).__name__}: {exc}") from None

    def _raise_for(self, r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        text = r.text[:300]
        if r.status_code in (400, 422) and "response_format" in text:
            raise _FormatRefused(text)
        raise LLMUnavailable(f"{self.base_url} answered {r.status_code}: {text}")

    def close(self) -> None:
        self._client.close()


class _FormatRefused(Exception):
    pass


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
class CallRecorder:
    """Keeps the transcript of one experiment and streams its calls as events.

    ``transcript`` entries: {role, model, prompt, reply, duration_s, tokens_in, tokens_out, ok,
    error, attempt}. ``emit`` receives ``AgentMessage`` (and ``Warning``) events.
    """

    exp_id: str | None = None
    emit: Callable[[Event], None] | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)

    def event(self, ev: Event) -> None:
        """Emit ``ev`` (tagged with this experiment) if anyone listens."""
        if ev.exp_id is None:
            ev.exp_id = self.exp_id
        if self.emit is not None:
            self.emit(ev)

    def warn(self, message: str, source: str = "llm") -> None:
        """A visible warning."""
        self.event(Warning(message=message, source=source))

    def record(self, role: str, model: str, prompt: str, reply: str, duration_s: float,
               tokens_in: int | None, tokens_out: int | None, ok: bool = True,
               error: str | None = None, attempt: int = 1, prompt_in_event: bool = True) -> None:
        """Keep one call (a real LLM call or a builtin agent's step). The event repeats the
        prompt unless ``prompt_in_event`` is False (it was already sent as a ``request``)."""
        self.transcript.append({
            "role": role, "model": model, "prompt": prompt, "reply": reply,
            "duration_s": round(float(duration_s), 4), "tokens_in": tokens_in,
            "tokens_out": tokens_out, "ok": ok, "error": error, "attempt": attempt,
        })
        self.event(AgentMessage(role=role, model=model, message="reply" if ok else "error",
                                text=reply if ok else (error or reply),
                                prompt=prompt if prompt_in_event else "",
                                duration_s=duration_s, tokens_in=tokens_in, tokens_out=tokens_out,
                                attempt=attempt))


_FENCE = re.compile(r"^```(?:json|JSON)?\s*\n?(.*?)\n?```\s*$", re.S)


def extract_json(text: str) -> dict[str, Any]:
    """The JSON object in a reply (plain, fenced, or the outermost ``{...}``); ``ValueError`` if none."""
    t = (text or "").strip()
    m = _FENCE.match(t)
    if m:
        t = m.group(1).strip()
    # drop a leading <think>...</think> block some reasoning models emit
    t = re.sub(r"^<think>.*?</think>\s*", "", t, flags=re.S)
    try:
        obj = json.loads(t)
    except json.JSONDecodeError as first:
        i, j = t.find("{"), t.rfind("}")
        if i < 0 or j <= i:
            raise ValueError(f"the reply is not JSON ({first.msg} at position {first.pos})") from None
        try:
            obj = json.loads(t[i : j + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"the reply is not JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"the reply is JSON but not an object (got {type(obj).__name__})")
    return obj


def _prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def chat_json(
    backend: ChatBackend,
    role: str,
    messages: list[dict[str, str]],
    schema: dict[str, Any],
    recorder: CallRecorder | None = None,
    validate: Callable[[dict[str, Any]], str | None] | None = None,
    retries: int = 2,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Ask ``backend`` for a JSON object matching ``schema`` and return it.

    Transport failures are retried ``retries`` times with exponential backoff (a warning each
    time), then ``LLMUnavailable`` is raised. A reply that is not JSON, misses a required field
    or fails ``validate`` (which returns an error message or None) goes back to the model once
    with the error; if the second reply is bad too, ``MalformedReply`` is raised. Every call is
    recorded in ``recorder``.
    """
    rec = recorder or CallRecorder()
    msgs = list(messages)
    required = list(schema.get("required", []))
    last_error = ""
    for attempt in (1, 2):
        prompt = _prompt_text(msgs)
        rec.event(AgentMessage(role=role, model=backend.spec, message="request", prompt=prompt,
                               attempt=attempt))

        def _delta(piece: str) -> None:
            rec.event(AgentMessage(role=role, model=backend.spec, message="delta", text=piece,
                                   attempt=attempt))

        reply: ChatReply | None = None
        for i in range(retries + 1):
            try:
                reply = backend.chat(msgs, schema=schema, on_token=_delta)
                break
            except LLMUnavailable as exc:
                rec.record(role, backend.spec, prompt, "", 0.0, None, None, ok=False,
                           error=str(exc), attempt=attempt, prompt_in_event=False)
                if i < retries:
                    wait = backoff_s * (2**i)
                    rec.warn(f"{role}: {exc}; retrying in {wait:.1f} s ({i + 1}/{retries})")
                    sleep(wait)
                else:
                    raise LLMUnavailable(f"{role}: {exc} (after {retries + 1} tries)") from None
        assert reply is not None
        error = None
        obj: dict[str, Any] = {}
        try:
            obj = extract_json(reply.text)
            missing = [k for k in required if k not in obj or obj[k] in (None, "")]
            if missing:
                error = f"the reply misses the required field(s) {', '.join(missing)}"
            elif validate is not None:
                error = validate(obj)
        except ValueError as exc:
            error = str(exc)
        rec.record(role, backend.spec, prompt, reply.text, reply.duration_s, reply.tokens_in,
                   reply.tokens_out, ok=error is None, error=error, attempt=attempt, prompt_in_event=False)
        if error is None:
            return obj
        last_error = error
        msgs = msgs + [
            {"role": "assistant", "content": reply.text},
            {"role": "user", "content": (
                f"Your reply could not be used: {error}. Answer again with one JSON object that "
                f"has the fields {', '.join(required)} and nothing else.")},
        ]
    raise MalformedReply(f"{role}: the reply stayed unusable after one correction: {last_error}")
