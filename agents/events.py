"""Typed events that flow from the research loop to the UI and to ``events.jsonl``.

Every event is a small dataclass with a ``kind`` (its class name), a timestamp ``ts`` (Unix
seconds) and the id of the experiment it belongs to (``exp_id``, ``None`` for loop-wide events).
``to_json`` / ``from_json`` round-trip any event through one JSON line; ``EventBus`` fans events
out to subscribers (thread-safe) and appends them to the lab's event log.

Streaming token deltas are ``AgentMessage(kind="delta")``; they reach subscribers but are not
written to ``events.jsonl`` (the full reply follows as ``kind="reply"``), so the log stays small.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

__all__ = [
    "Event",
    "ExperimentStarted",
    "BaselineProgress",
    "StageChanged",
    "LogLine",
    "AgentMessage",
    "MetricPoint",
    "ApprovalRequested",
    "ExperimentFinished",
    "LoopStateChanged",
    "Warning",
    "AgentStep",
    "LLMStatus",
    "EVENT_TYPES",
    "to_json",
    "from_json",
    "read_events",
    "EventBus",
]


@dataclass(kw_only=True)
class Event:
    """Base of all events: ``ts`` (Unix time) and ``exp_id`` (experiment id or None)."""

    kind: ClassVar[str] = "Event"
    exp_id: str | None = None
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-able dict, with its ``kind``."""
        d = dataclasses.asdict(self)
        d["kind"] = type(self).kind
        return d


@dataclass(kw_only=True)
class ExperimentStarted(Event):
    """A new experiment (or the redo of one found in flight) begins."""

    kind: ClassVar[str] = "ExperimentStarted"
    parent: str | None = None
    references: list[str] = field(default_factory=list)
    scale: str = ""
    mode: str = "autonomous"
    redo: bool = False


@dataclass(kw_only=True)
class StageChanged(Event):
    """A stage of one experiment starts, ends or fails.

    ``stage`` is one of ``sample, research, novelty, check, debug, approval, evaluate, seeds (more seeds
    for a rung-0 result that would enter the top; "failed" = it stays at one seed), analyse,
    judge, score, commit``; ``status`` is ``started | finished | failed``.
    """

    kind: ClassVar[str] = "StageChanged"
    stage: str = ""
    status: str = "started"
    detail: str = ""
    duration_s: float | None = None


@dataclass(kw_only=True)
class LogLine(Event):
    """One line of a log: ``source`` is ``check``, ``train`` or ``loop``."""

    kind: ClassVar[str] = "LogLine"
    source: str = "loop"
    line: str = ""


@dataclass(kw_only=True)
class AgentMessage(Event):
    """One agent call or a piece of it.

    ``kind_`` is ``request`` (the prompt is sent), ``delta`` (a streamed piece of the reply, in
    ``text``), ``reply`` (the full reply with duration and token counts) or ``error``.
    """

    kind: ClassVar[str] = "AgentMessage"
    role: str = ""
    model: str = ""
    message: str = "reply"
    text: str = ""
    prompt: str = ""
    duration_s: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    attempt: int = 1


@dataclass(kw_only=True)
class MetricPoint(Event):
    """One measured value, e.g. ``name="train_loss"`` at ``step``."""

    kind: ClassVar[str] = "MetricPoint"
    name: str = ""
    step: int = 0
    value: float = 0.0


@dataclass(kw_only=True)
class ApprovalRequested(Event):
    """Supervised mode: a checked proposal waits for approve / reject / edit."""

    kind: ClassVar[str] = "ApprovalRequested"
    name: str = ""
    motivation: str = ""
    code: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class ExperimentFinished(Event):
    """An experiment is committed (``status`` accepted / failed / rejected)."""

    kind: ClassVar[str] = "ExperimentFinished"
    name: str = ""
    status: str = ""
    fitness: float | None = None
    fitness_components: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    sha: str | None = None
    duration_s: float | None = None
    reason: str = ""
    #: the promotion rule's outcome at the commit (``promoted``, ``tied``, ``below``,
    #: ``single_seed``, ``unmeasured``; empty when not decided)
    promotion: str = ""


@dataclass(kw_only=True)
class LoopStateChanged(Event):
    """The loop's state: ``idle, running, paused, waiting_approval, stopping, stopped, finished``."""

    kind: ClassVar[str] = "LoopStateChanged"
    state: str = "idle"
    detail: str = ""
    experiments_done: int = 0
    budget_experiments: int | None = None
    budget_hours: float | None = None


@dataclass(kw_only=True)
class Warning(Event):  # noqa: A001 - the event's name is fixed by the design
    """Something the user should see that did not stop the loop (e.g. an LLM fell back)."""

    kind: ClassVar[str] = "Warning"
    message: str = ""
    source: str = ""


@dataclass(kw_only=True)
class BaselineProgress(Event):
    """A reference baseline is being measured (``status="started"``) or was (``"finished"``).

    ``seed``: it is the seed (DeltaNet), the yardstick experiments wait for; otherwise one of
    the comparisons, ``index`` of ``total`` (e.g. 2 of 5), measured between experiments.
    ``result``: the metrics' status when finished (``ok``, ``too_slow``...)."""

    kind: ClassVar[str] = "BaselineProgress"
    name: str = ""
    status: str = "started"
    seed: bool = False
    index: int = 0
    total: int = 0
    result: str = ""
    detail: str = ""


@dataclass(kw_only=True)
class AgentStep(Event):
    """One agent step was answered: ``by`` is ``llm`` (the model's answer was used),
    ``fallback`` (the built-in agent answered after the model could not, ``reason`` says why)
    or ``builtin`` (the role is configured built-in)."""

    kind: ClassVar[str] = "AgentStep"
    role: str = ""
    by: str = "llm"
    spec: str = ""
    reason: str = ""


@dataclass(kw_only=True)
class LLMStatus(Event):
    """The LLM side of the roles, after negotiation and whenever a role's circuit opens or
    closes: ``roles`` maps each role to ``{spec, summary, state, llm, fallback, builtin}``
    (``state``: ``builtin``, ``ok``, ``open`` (the built-in agent answers until a retry) or
    ``unreachable``; the counts are steps so far)."""

    kind: ClassVar[str] = "LLMStatus"
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    detail: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        ExperimentStarted,
        StageChanged,
        LogLine,
        AgentMessage,
        MetricPoint,
        ApprovalRequested,
        ExperimentFinished,
        LoopStateChanged,
        Warning,
        BaselineProgress,
        AgentStep,
        LLMStatus,
    )
}


def to_json(event: Event) -> str:
    """One JSON line (no newline) for ``event``."""
    return json.dumps(event.to_dict(), default=str, ensure_ascii=False)


def from_json(line: str | dict[str, Any]) -> Event:
    """Rebuild an event from ``to_json``'s output (or its dict). Unknown fields are ignored."""
    d = json.loads(line) if isinstance(line, str) else dict(line)
    kind = d.pop("kind", None)
    cls = EVENT_TYPES.get(kind or "")
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def read_events(path: str | Path) -> list[Event]:
    """All events of an ``events.jsonl`` file (lines that do not parse are skipped)."""
    out: list[Event] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(from_json(line))
        except (ValueError, TypeError):
            continue
    return out


class EventBus:
    """Fans events out to subscribers and appends them to a JSON-lines log.

    ``emit`` may be called from any thread. Subscribers are called in the emitting thread (a UI
    must hand them over to its own thread, e.g. Textual's ``call_from_thread``); ``iterate()``
    gives a thread-safe blocking iterator instead.
    """

    def __init__(self, log_path: str | Path | None = None) -> None:
        self.log_path = Path(log_path) if log_path else None
        self._subs: list[Callable[[Event], None]] = []
        self._queues: list[queue.Queue[Event | None]] = []
        self._lock = threading.Lock()
        self.history_limit = 2000
        self.history: list[Event] = []

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that unsubscribes."""
        with self._lock:
            self._subs.append(callback)

        def _unsubscribe() -> None:
            with self._lock:
                if callback in self._subs:
                    self._subs.remove(callback)

        return _unsubscribe

    def queue(self) -> "queue.Queue[Event | None]":
        """A new queue that receives every later event (``None`` after ``close()``)."""
        q: queue.Queue[Event | None] = queue.Queue()
        with self._lock:
            self._queues.append(q)
        return q

    def iterate(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events as they come until ``close()`` (or ``timeout`` seconds of silence)."""
        q = self.queue()
        while True:
            try:
                ev = q.get(timeout=timeout)
            except queue.Empty:
                return
            if ev is None:
                return
            yield ev

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to subscribers and queues, and log it (not token deltas)."""
        with self._lock:
            subs = list(self._subs)
            queues = list(self._queues)
            if not (isinstance(event, AgentMessage) and event.message == "delta"):
                self.history.append(event)
                if len(self.history) > self.history_limit:
                    del self.history[: len(self.history) - self.history_limit]
                if self.log_path is not None:
                    self.log_path.parent.mkdir(parents=True, exist_ok=True)
                    with open(self.log_path, "a", encoding="utf-8") as fh:
                        fh.write(to_json(event) + "\n")
        for q in queues:
            q.put(event)
        for cb in subs:
            try:
                cb(event)
            except Exception:  # a failing subscriber never stops the loop
                pass

    def close(self) -> None:
        """Tell every ``queue()``/``iterate()`` consumer that no more events will come."""
        with self._lock:
            queues = list(self._queues)
            self._queues.clear()
        for q in queues:
            q.put(None)
