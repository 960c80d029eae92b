"""A scripted LLM server for tests: Ollama's API and an OpenAI-compatible one, on 127.0.0.1.

Endpoints: ``GET /api/tags``, ``POST /api/show`` (``num_ctx`` when ``context_length`` is set),
``POST /api/chat`` (streaming NDJSON or not), ``POST /api/embed`` (deterministic hashed
bag-of-words vectors), ``GET /v1/models``, ``POST /v1/chat/completions`` (SSE streaming or not),
``GET /props`` (llama.cpp style, when ``props`` is set).

Negotiation probes (the tiny ``{"ok": true}`` request of ``ChatBackend.negotiate``) are answered
by the server itself (with ``probe_reply`` when given, e.g. one that dies mid-stream); ``formats`` lists the structured-output forms it accepts (others get
``refuse_status`` with a pydantic-like body, as llama-cpp-python answers ``json_schema``).
``flavour="ollama"`` makes ``/v1`` answer like Ollama's OpenAI-compatible mode (error bodies
``{"error": {"message", "type"}}``). Replies come from a *responder*: a function ``(request_json, path) ->
Reply | str | dict``; ``ScriptedResponder`` routes by agent role (found in the system prompt)
to per-role queues. A ``Reply`` can also hang, die mid-stream or answer with an HTTP error.

The server listens on an ephemeral port, only on the loopback address, answers at most
``max_requests`` requests and shuts itself down after ``lifetime_s`` seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


#: A reply schema, a valid reply and a prompt shared by the backend tests.
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "motivation": {"type": "string"}, "code": {"type": "string"}},
    "required": ["name", "motivation", "code"],
}
GOOD = {"name": "x", "motivation": "because", "code": "class Mixer:\n    pass\n"}
SYS = [{"role": "system", "content": "You are the Researcher of a lab."}, {"role": "user", "content": "go"}]


@dataclass
class Reply:
    """One scripted answer.

    ``content``: the assistant text (a dict is JSON-encoded). ``hang_s``: sleep before answering
    (bounded by the server's life). ``die_after``: for streams, close the connection after this
    many chunks without finishing. ``status``: answer with this HTTP error instead.
    ``chunk_delay_s``: sleep between streamed chunks (a slow token stream). ``finish_reason``:
    what the end of the reply says (``length`` for a reply cut at ``max_tokens``).
    """

    content: str | dict[str, Any] = ""
    hang_s: float = 0.0
    die_after: int | None = None
    status: int | None = None
    chunk_chars: int = 16
    chunk_delay_s: float = 0.0
    finish_reason: str = "stop"

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else json.dumps(self.content)


def _as_reply(r: Any) -> Reply:
    if isinstance(r, Reply):
        return r
    if isinstance(r, dict):
        return Reply(content=r)
    return Reply(content=str(r))


ROLE_RE = re.compile(r"You are the (\w+)", re.I)


def role_of(request: dict[str, Any]) -> str:
    """The agent role named in the request's system prompt ("You are the Researcher ...")."""
    for m in request.get("messages", []):
        if m.get("role") == "system":
            found = ROLE_RE.search(m.get("content", ""))
            if found:
                return found.group(1).lower()
    return "unknown"


class ScriptedResponder:
    """Per-role queues of replies; a role whose queue is empty gets ``default(role, request)``."""

    def __init__(self, default: Callable[[str, dict[str, Any]], Any] | None = None) -> None:
        self.queues: dict[str, deque[Any]] = defaultdict(deque)
        self.default = default
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def add(self, role: str, *replies: Any) -> "ScriptedResponder":
        """Queue replies for ``role`` (lower-case: researcher, debugger, analyst, judge)."""
        with self._lock:
            self.queues[role.lower()].extend(replies)
        return self

    def __call__(self, request: dict[str, Any], path: str) -> Any:
        role = role_of(request)
        with self._lock:
            self.seen.append((role, request))
            if self.queues[role]:
                return self.queues[role].popleft()
        if self.default is not None:
            return self.default(role, request)
        return Reply(status=500, content=f"no scripted reply for role {role}")


def _is_probe(body: dict[str, Any]) -> bool:
    msgs = body.get("messages") or []
    return bool(msgs) and 'Reply with the JSON object {"ok": true}' in str(msgs[-1].get("content", ""))


def _format_of(path: str, body: dict[str, Any]) -> str | None:
    """The structured-output form a chat request asks for (None: plain text)."""
    if path == "/api/chat":
        f = body.get("format")
        if f is None or f == "":
            return None
        return "json_object" if f == "json" else "json_schema"
    rf = body.get("response_format")
    if not rf:
        return None
    if rf.get("type") == "json_schema":
        return "json_schema"
    if rf.get("type") == "json_object":
        return "json_object+schema" if rf.get("schema") else "json_object"
    return str(rf.get("type"))


def hashed_embedding(text: str, dim: int = 64) -> list[float]:
    """A deterministic bag-of-words vector, L2-normalised (similar texts -> similar vectors)."""
    v = [0.0] * dim
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        h = int(hashlib.md5(w.encode()).hexdigest(), 16)
        v[h % dim] += 1.0 if (h >> 8) & 1 else -1.0
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out or go away are expected here: no traceback."""


class FakeLLMServer:
    """The server; use as a context manager. ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(
        self,
        responder: Callable[[dict[str, Any], str], Any] | None = None,
        models: tuple[str, ...] = ("scripted",),
        max_requests: int = 500,
        lifetime_s: float = 300.0,
        formats: tuple[str, ...] = ("json_schema", "json_object+schema", "json_object", "plain"),
        refuse_status: int = 400,
        context_length: int | None = None,
        props: bool = False,
        flavour: str = "openai",
        usage: bool = True,
        tokenizer: bool = False,
        probe_reply: Reply | None = None,
    ) -> None:
        self.probe_reply = probe_reply
        self.usage = usage
        self.tokenizer = tokenizer
        self.formats = formats
        self.refuse_status = refuse_status
        self.context_length = context_length
        self.props = props
        self.flavour = flavour
        self.responder = responder or ScriptedResponder(default=lambda role, req: Reply(content="{}"))
        self.models = models
        self.max_requests = max_requests
        self.lifetime_s = lifetime_s
        self.requests: list[tuple[str, dict[str, Any]]] = []
        #: the structured-output form of each negotiation probe answered
        self.probes: list[str] = []
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._url = ""

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (valid after ``start()``, also after ``stop()``)."""
        return self._url

    def start(self) -> "FakeLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _json(self, code: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _count(self) -> bool:
                if len(server.requests) >= server.max_requests or server._stop.is_set():
                    self._json(503, {"error": "request limit reached"})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802
                if not self._count():
                    return
                server.requests.append((self.path, {}))
                if self.path == "/api/tags":
                    self._json(200, {"models": [{"model": m, "name": m} for m in server.models]})
                elif self.path == "/props" and server.props and server.context_length:
                    self._json(200, {"default_generation_settings": {"n_ctx": server.context_length},
                                     "total_slots": 1})
                elif self.path in ("/v1/models", "/models"):
                    self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                elif self.path == "/":
                    self.send_response(200)
                    self.send_header("Content-Length", "17")
                    self.end_headers()
                    self.wfile.write(b"Ollama is running")
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                if not self._count():
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                server.requests.append((self.path, body))
                if self.path == "/api/embed":
                    inputs = body.get("input", "")
                    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
                    self._json(200, {"model": body.get("model"), "embeddings": [hashed_embedding(t) for t in inputs]})
                    return
                if self.path == "/extras/tokenize/count" and server.tokenizer:
                    self._json(200, {"count": len(str(body.get("input", "")).split())})
                    return
                if self.path == "/api/show":
                    if body.get("model") not in server.models:
                        self._json(404, {"error": f"model '{body.get('model')}' not found"})
                        return
                    params = f"num_ctx                        {server.context_length}" if server.context_length else ""
                    self._json(200, {"modelfile": "", "parameters": params, "template": "",
                                     "details": {"family": "scripted"},
                                     "model_info": {"scripted.context_length": 32768}})
                    return
                if self.path not in ("/api/chat", "/v1/chat/completions"):
                    self._json(404, {"error": "not found"})
                    return
                form = _format_of(self.path, body)
                if form is not None and form not in server.formats:
                    self._json(server.refuse_status, {"error": {
                        "message": f"[{{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                                   f"'msg': \"Input should be 'text' or 'json_object'\", 'input': '{form}'}}]",
                        "type": "internal_server_error"}})
                    return
                if server.context_length and self._too_long(body):
                    return
                if _is_probe(body):
                    server.probes.append(form or "plain")
                    reply = server.probe_reply or Reply(content={"ok": True})
                else:
                    reply = _as_reply(server.responder(body, self.path))
                if reply.hang_s:
                    server._stop.wait(reply.hang_s)
                if reply.status:
                    if server.flavour == "ollama" and self.path.startswith("/v1"):
                        self._json(reply.status, {"error": {"message": reply.text() or "scripted error",
                                                            "type": "api_error", "param": None, "code": None}})
                    else:
                        self._json(reply.status, {"error": reply.text() or "scripted error"})
                    return
                if self.path == "/api/chat":
                    self._ollama(body, reply)
                else:
                    self._openai(body, reply)

            def _too_long(self, body: dict[str, Any]) -> bool:
                n = sum(len(m.get("content", "")) for m in body.get("messages", [])) // 3
                want = n + int(body.get("max_tokens") or 0)
                if want <= int(server.context_length or 0):
                    return False
                if self.path == "/api/chat":
                    return False  # Ollama cuts the prompt silently
                msg = (f"This model's maximum context length is {server.context_length} tokens. However, you "
                       f"requested {want} tokens ({n} in the messages, {body.get('max_tokens')} in the completion).")
                self._json(400, {"error": {"message": msg, "type": "invalid_request_error",
                                           "code": "context_length_exceeded"}})
                return True

            def _chunks(self, reply: Reply) -> list[str]:
                t = reply.text()
                n = max(1, reply.chunk_chars)
                return [t[i : i + n] for i in range(0, len(t), n)] or [""]

            def _ollama(self, body: dict[str, Any], reply: Reply) -> None:
                model = body.get("model", "")
                tin = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
                tout = len(reply.text().split())
                if not body.get("stream", True):
                    self._json(200, {"model": model, "created_at": "2026-01-01T00:00:00Z",
                                     "message": {"role": "assistant", "content": reply.text()},
                                     "done": True, "done_reason": "stop",
                                     "prompt_eval_count": tin, "eval_count": tout})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunks = self._chunks(reply)
                for i, c in enumerate(chunks):
                    if reply.die_after is not None and i >= reply.die_after:
                        self._die()
                        return
                    if reply.chunk_delay_s:
                        server._stop.wait(reply.chunk_delay_s)
                    self._write_chunk(json.dumps({"model": model, "message": {"role": "assistant", "content": c},
                                                  "done": False}) + "\n")
                self._write_chunk(json.dumps({"model": model, "message": {"role": "assistant", "content": ""},
                                              "done": True, "done_reason": "stop",
                                              "prompt_eval_count": tin, "eval_count": tout}) + "\n")
                self._write_chunk("")

            def _openai(self, body: dict[str, Any], reply: Reply) -> None:
                model = body.get("model", "")
                tin = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
                tout = len(reply.text().split())
                usage = {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}
                if not body.get("stream"):
                    self._json(200, {"id": "x", "object": "chat.completion", "model": model,
                                     "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                                                  "message": {"role": "assistant", "content": reply.text()}}],
                                     **({"usage": usage} if server.usage else {})})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i, c in enumerate(self._chunks(reply)):
                    if reply.die_after is not None and i >= reply.die_after:
                        self._die()
                        return
                    if reply.chunk_delay_s:
                        server._stop.wait(reply.chunk_delay_s)
                    chunk = {"id": "x", "object": "chat.completion.chunk", "model": model,
                             "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]}
                    self._write_chunk(f"data: {json.dumps(chunk)}\n\n")
                end = {"id": "x", "object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]}
                self._write_chunk(f"data: {json.dumps(end)}\n\n")
                if (body.get("stream_options") or {}).get("include_usage") and server.usage:
                    self._write_chunk(f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n")
                self._write_chunk("data: [DONE]\n\n")
                self._write_chunk("")

            def _write_chunk(self, s: str) -> None:
                data = s.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _die(self) -> None:
                # abort the chunked body: close the socket without the terminating chunk
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent); hanging replies are released."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def chat_requests(self) -> list[dict[str, Any]]:
        """The bodies of the chat requests received so far (negotiation probes left out)."""
        return [b for p, b in self.requests if p in ("/api/chat", "/v1/chat/completions") and not _is_probe(b)]

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _main() -> None:  # pragma: no cover - manual use
    """Run a server that echoes a fixed proposal, for trying the CLI by hand."""
    import sys

    srv = FakeLLMServer(lifetime_s=float(sys.argv[1]) if len(sys.argv) > 1 else 60.0).start()
    print(srv.url, flush=True)
    time.sleep(srv.lifetime_s)


if __name__ == "__main__":  # pragma: no cover
    _main()
