"""The LLM side of one run: a backend per configured model, negotiated once, and per role a
call policy, a circuit breaker and the accounting of who answered each step.

* :class:`RoleSession` is what an LLM agent calls (``ask``): it bounds the call (``CallPolicy``
  from the role's schema, the config and the negotiated context), and counts consecutive
  failures; after ``breaker_failures`` of them (default 3) the role's circuit opens: one
  warning, the built-in agent answers that role's steps, and after ``breaker_minutes`` one
  call tries the server again (a success closes the circuit, a failure keeps it open).
* :class:`LLMSession` builds the role sessions from the ``--llm`` override or the lab's
  ``[llm]`` config, shares one backend between roles naming the same model, negotiates each
  backend once (``negotiate``; a missing model raises ``ModelMissing``, an unreachable server
  opens the circuits of its roles), and describes the result (``describe``, ``status``).
* :func:`tally` counts, per role, the steps the model answered vs the built-in fallback and the
  calls (time, tokens) over experiment records — for the run's final table, ``status`` and the
  report.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from agents.events import Event, LLMStatus, Warning
from agents.llm import (
    CallPolicy,
    CallRecorder,
    Capabilities,
    ChatBackend,
    LLMError,
    LLMSpec,
    LLMUnavailable,
    chat_json,
    make_backend,
)

__all__ = [
    "ROLES",
    "CircuitOpen",
    "CircuitBreaker",
    "RoleSession",
    "LLMSession",
    "schema_max_tokens",
    "fallback",
    "tally",
    "format_tally",
]

ROLES = ("researcher", "analyst", "judge", "debugger")


class CircuitOpen(LLMUnavailable):
    """The role's circuit is open: the built-in agent answers without calling the server."""


def schema_max_tokens(schema: dict[str, Any]) -> int:
    """A reply budget for ``schema``: 1536 tokens when it asks for code, else ~160 per text
    field and 16 per number (plus a little for the JSON itself)."""
    props = schema.get("properties") or {}
    if "code" in props:
        return 1536
    n_text = sum(1 for p in props.values() if p.get("type") == "string")
    n_num = sum(1 for p in props.values() if p.get("type") in ("integer", "number", "boolean"))
    return 48 + 160 * n_text + 16 * n_num


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; lets one call through after
    ``cooldown_s`` (half-open). Thread-safe. ``clock`` is injectable for tests."""

    def __init__(self, threshold: int = 3, cooldown_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = max(1, int(threshold))
        self.cooldown_s = float(cooldown_s)
        self.clock = clock
        self.failures = 0
        self.state = "closed"
        self.opened_at: float | None = None
        self.trips = 0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May a call go to the server now?"""
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open" and self.opened_at is not None and \
                    self.clock() - self.opened_at >= self.cooldown_s:
                self.state = "half-open"
                return True
            return False

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a call through (0 when closed)."""
        with self._lock:
            if self.state != "open" or self.opened_at is None:
                return 0.0
            return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))

    def success(self) -> bool:
        """A call worked; True when this closed an open circuit."""
        with self._lock:
            was = self.state
            self.failures, self.state, self.opened_at = 0, "closed", None
            return was != "closed"

    def failure(self) -> bool:
        """A call failed; True when this opened the circuit (not when a retry failed again)."""
        with self._lock:
            self.failures += 1
            if self.state == "half-open":
                self.state, self.opened_at = "open", self.clock()
                return False
            if self.state == "closed" and self.failures >= self.threshold:
                self.state, self.opened_at = "open", self.clock()
                self.trips += 1
                return True
            return False

    def open_now(self) -> None:
        """Open the circuit at once (an unreachable server at the start)."""
        with self._lock:
            if self.state != "open":
                self.trips += 1
            self.state, self.opened_at = "open", self.clock()


class RoleSession:
    """One role's LLM: backend, call policy, circuit breaker and retry settings."""

    def __init__(self, role: str, backend: ChatBackend, policy: CallPolicy | None = None,
                 breaker: CircuitBreaker | None = None, retries: int = 2, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, max_tokens: int = 0) -> None:
        self.role = role
        self.backend = backend
        self.spec = backend.spec
        self.policy = policy or CallPolicy()
        self.breaker = breaker or CircuitBreaker()
        self.retries = retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        #: configured reply limit (0: from the schema of each call)
        self.max_tokens = max_tokens
        self.on_change: Callable[[], None] | None = None

    def ask(self, recorder: CallRecorder, prompt: Any, schema: dict[str, Any],
            validate: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
        """``chat_json`` under this role's policy and circuit; raises ``LLMError`` (``CircuitOpen``
        without calling the server while the circuit is open)."""
        if not self.breaker.allow():
            mins = self.breaker.retry_in() / 60.0
            raise CircuitOpen(f"switched to the built-in agent after {self.breaker.threshold} consecutive "
                              f"failures; the server is tried again in {mins:.1f} min")
        was_open = self.breaker.state == "half-open"
        pol = CallPolicy(**{**self.policy.__dict__})
        pol.max_tokens = self.max_tokens or schema_max_tokens(schema)
        try:
            obj = chat_json(self.backend, self.role, prompt, schema, recorder, validate=validate,
                            retries=0 if was_open else self.retries, backoff_s=self.backoff_s,
                            sleep=self.sleep, policy=pol)
        except LLMError as exc:
            self.policy.context_length = pol.context_length  # learned from a server error
            self.policy.chars_per_token = pol.chars_per_token
            if self.breaker.failure():
                recorder.warn(
                    f"{self.role}: {self.breaker.threshold} consecutive failures of {self.spec} (last: "
                    f"{_short(str(exc))}); the built-in {self.role} answers for the next "
                    f"{self.breaker.cooldown_s / 60:.0f} min, then the server is tried again", source="llm")
                self._changed()
            raise
        self.policy.context_length = pol.context_length
        self.policy.chars_per_token = pol.chars_per_token
        if self.breaker.success():
            recorder.warn(f"{self.role}: {self.spec} answers again; the circuit is closed", source="llm-ok")
            self._changed()
        return obj

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _short(text: str, n: int = 240) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def fallback(recorder: CallRecorder, role: str, spec: str, exc: Exception, builtin_name: str = "") -> str:
    """Note that ``role``'s model could not answer this step (``exc``): a warning (none while the
    circuit is open: it was given once) and a ``fallback`` step. Returns the reason."""
    reason = str(exc)
    name = builtin_name or f"built-in {role}"
    if not isinstance(exc, CircuitOpen):
        recorder.warn(f"{role}: {_short(reason, 400)}; the {name} answers this step", source=role)
    recorder.step(role, "fallback", spec, _short(reason, 400))
    return reason


@dataclass
class _Backend:
    backend: ChatBackend
    roles: list[str] = field(default_factory=list)


class LLMSession:
    """The backends and role sessions of one run (see the module doc).

    ``role_specs``: role → ``LLMSpec`` (``builtin`` roles get no session). ``config``: the
    lab's ``LLMConfig`` (context length, reply limits, temperatures, timeout, breaker).
    """

    def __init__(self, role_specs: dict[str, LLMSpec], config: Any = None, timeout_s: float = 300.0,
                 retries: int = 2, backoff_s: float = 1.0,
                 backend_factory: Callable[..., ChatBackend | None] = make_backend,
                 clock: Callable[[], float] = time.monotonic) -> None:
        c = config
        g = (lambda k, d: getattr(c, k, d)) if c is not None else (lambda k, d: d)
        self.context_length = int(g("context_length", 0) or 0)
        self.specs = dict(role_specs)
        self.roles: dict[str, RoleSession | None] = {}
        self.backends: dict[str, _Backend] = {}
        self.caps: dict[str, Capabilities] = {}
        self.emit: Callable[[Event], None] | None = None
        self._negotiated = False
        wall = float(g("call_timeout_s", 0.0) or 0.0) or timeout_s
        for role in ROLES:
            spec = self.specs.get(role, LLMSpec("builtin"))
            if spec.backend == "builtin":
                self.roles[role] = None
                continue
            key = str(spec)
            if key not in self.backends:
                be = backend_factory(spec, timeout_s=timeout_s)
                if be is None:
                    self.roles[role] = None
                    continue
                self.backends[key] = _Backend(be)
            self.backends[key].roles.append(role)
            policy = CallPolicy(temperature=g("temperature", None), correction_temperature=g(
                "correction_temperature", None), wall_timeout_s=wall,
                context_length=self.context_length or None)
            rs = RoleSession(role, self.backends[key].backend, policy,
                             CircuitBreaker(int(g("breaker_failures", 3)), 60.0 * float(g("breaker_minutes", 10.0)),
                                            clock=clock),
                             retries=retries, backoff_s=backoff_s, max_tokens=int(g(f"{role}_max_tokens", 0) or 0))
            rs.on_change = self.publish
            self.roles[role] = rs

    def session(self, role: str) -> RoleSession | None:
        """The role's session, or None when it runs built-in."""
        return self.roles.get(role)

    @property
    def negotiated(self) -> bool:
        """True once ``negotiate`` ran."""
        return self._negotiated

    def negotiate(self, emit: Callable[[Event], None] | None = None, probe: bool = True) -> dict[str, Capabilities]:
        """Negotiate every backend once (later calls only re-publish). An unreachable server opens
        its roles' circuits (one warning); a missing model raises ``ModelMissing``."""
        if emit is not None:
            self.emit = emit
        if self._negotiated:
            self.publish()
            return self.caps
        for key, b in self.backends.items():
            caps = b.backend.negotiate(self.context_length, probe=probe)
            self.caps[key] = caps
            for role in b.roles:
                rs = self.roles[role]
                assert rs is not None
                if caps.reachable:
                    rs.policy.context_length = caps.context_length
                else:
                    rs.breaker.open_now()
            if not caps.reachable and self.emit is not None:
                mins = next(self.roles[r].breaker.cooldown_s for r in b.roles) / 60.0  # type: ignore[union-attr]
                self.emit(Warning(source="llm", message=(
                    f"{b.backend.spec} is unreachable ({caps.error}); {', '.join(b.roles)} run on the built-in "
                    f"agents and the server is tried again in {mins:.0f} min")))
        self._negotiated = True
        self.publish()
        return self.caps

    def role_caps(self, role: str) -> Capabilities | None:
        """The negotiated capabilities of ``role``'s backend (None: builtin or not negotiated)."""
        return self.caps.get(str(self.specs.get(role, LLMSpec("builtin"))))

    def describe(self) -> list[str]:
        """One line per role, e.g. ``researcher: smollm2 @ URL, JSON via json_object+schema, ctx 8192``."""
        out = []
        for role in ROLES:
            rs = self.roles.get(role)
            if rs is None:
                out.append(f"{role}: built-in")
                continue
            caps = self.role_caps(role)
            out.append(f"{role}: " + (caps.describe() if caps is not None else f"{rs.spec} (not negotiated)"))
        return out

    def label(self) -> str:
        """A short label for a status bar: the distinct backends with JSON form and context."""
        parts = []
        for key, b in self.backends.items():
            caps = self.caps.get(key)
            if caps is None:
                parts.append(b.backend.model)
            elif not caps.reachable:
                parts.append(f"{b.backend.model} unreachable")
            else:
                parts.append(f"{b.backend.model} {caps.json_mode} ctx {caps.context_length}")
        return "; ".join(parts) or "builtin"

    def status(self) -> dict[str, dict[str, Any]]:
        """Per role ``{spec, summary, state}`` (for ``LLMStatus``)."""
        out: dict[str, dict[str, Any]] = {}
        for role in ROLES:
            rs = self.roles.get(role)
            if rs is None:
                out[role] = {"spec": "builtin", "summary": "built-in", "state": "builtin"}
                continue
            caps = self.role_caps(role)
            state = "ok" if rs.breaker.state == "closed" else "open"
            if caps is not None and not caps.reachable:
                state = "unreachable" if rs.breaker.state != "closed" else "ok"
            out[role] = {"spec": rs.spec, "summary": caps.describe() if caps else rs.spec, "state": state}
        return out

    def publish(self) -> None:
        """Emit an ``LLMStatus`` event (if anyone listens)."""
        if self.emit is not None:
            self.emit(LLMStatus(roles=self.status(), detail=self.label()))

    def close(self) -> None:
        """Close the backends' connections."""
        for b in self.backends.values():
            try:
                b.backend.close()
            except Exception:
                pass


def _empty() -> dict[str, Any]:
    return {"llm": 0, "fallback": 0, "builtin": 0, "calls": 0, "failed_calls": 0, "call_seconds": 0.0,
            "max_call_s": 0.0, "tokens_in": 0, "tokens_out": 0, "tokens_estimated": False, "specs": []}


def tally(records: Iterable[Any], into: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Per role: steps answered by the model (``llm``), by the built-in agent after the model
    could not (``fallback``) or by a built-in role (``builtin``); model calls (``calls``,
    ``failed_calls``, ``call_seconds``, ``max_call_s``) and tokens (``tokens_estimated`` when any
    count is an estimate). ``records`` are experiment records (or dicts with ``transcript`` and
    ``extra``); ``into`` is added to."""
    out = into if into is not None else {}
    for rec in records:
        extra = (rec.get("extra") if isinstance(rec, dict) else getattr(rec, "extra", None)) or {}
        transcript = (rec.get("transcript") if isinstance(rec, dict) else getattr(rec, "transcript", None)) or []
        for s in extra.get("agent_steps") or []:
            t = out.setdefault(s.get("role", "?"), _empty())
            by = s.get("by", "llm")
            t[by if by in ("llm", "fallback", "builtin") else "builtin"] += 1
            if s.get("spec") and s.get("spec") != "builtin" and s["spec"] not in t["specs"]:
                t["specs"].append(s["spec"])
        for e in transcript:
            model = str(e.get("model", ""))
            if not model or model == "builtin" or model.startswith("builtin"):
                continue
            t = out.setdefault(e.get("role", "?"), _empty())
            t["calls"] += 1
            t["failed_calls"] += 0 if e.get("ok") else 1
            d = float(e.get("duration_s") or 0.0)
            t["call_seconds"] = round(t["call_seconds"] + d, 3)
            t["max_call_s"] = round(max(t["max_call_s"], d), 3)
            t["tokens_in"] += int(e.get("tokens_in") or 0)
            t["tokens_out"] += int(e.get("tokens_out") or 0)
            t["tokens_estimated"] = t["tokens_estimated"] or bool(e.get("tokens_estimated"))
    return out


def format_tally(t: dict[str, Any]) -> dict[str, str]:
    """Display strings of one role's tally: ``answered`` ("3 LLM / 1 built-in" over the steps
    the model was asked, or "4 (built-in role)"), ``calls`` ("5 (2 failed)"), ``time`` (mean
    and max seconds per call, failed calls included) and ``tokens`` ("in/out", "~" when any
    count is an estimate)."""
    steps = t["llm"] + t["fallback"]
    if steps:
        answered = f"{t['llm']} LLM / {t['fallback']} built-in"
    else:
        answered = f"{t['builtin']} (built-in role)" if t["builtin"] else "-"
    calls = (f"{t['calls']}" + (f" ({t['failed_calls']} failed)" if t["failed_calls"] else "")) if t["calls"] else "-"
    mean = t["call_seconds"] / t["calls"] if t["calls"] else 0.0
    time_s = f"{mean:.1f} / {t['max_call_s']:.1f} s" if t["calls"] else "-"
    mark = "~" if t["tokens_estimated"] else ""
    tokens = f"{mark}{t['tokens_in']}/{mark}{t['tokens_out']}" if t["calls"] else "-"
    return {"answered": answered, "calls": calls, "time": time_s, "tokens": tokens}
