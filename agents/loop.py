"""The research loop: sample → research → novelty → check → (approve) → evaluate → analyse →
judge → score → commit (docs/ARCHITECTURE.md, "One experiment, step by step").

``Loop`` runs in one worker thread (``start()``) or in the caller's thread (``run()``). It talks
to the outside only through typed events (``agents.events``; ``subscribe``/``events``, also
appended to ``lab/events.jsonl``) and a command queue (``pause``, ``resume``, ``stop``, ``fork``,
``approve``, ``reject``, ``edit``, ``set_budget``: thread-safe methods that enqueue commands the
worker reads between stages).

Crash safety: each experiment in flight has ``lab/runs/<id>/state.json``; a loop started after a
kill finds it (its id not yet in the archive) and redoes that experiment with the same id, parent
and references (and its proposal, when it had one). The archive commit is atomic, so nothing
committed is lost or duplicated.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import random
import re
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from agents.analyst import BuiltinAnalyst, LLMAnalyst
from agents.engineer import BuiltinDebugger, Decision, Engineer, Executor, LLMDebugger, SandboxExecutor, with_trust
from agents.events import (
    ApprovalRequested,
    BaselineProgress,
    Event,
    EventBus,
    ExperimentFinished,
    ExperimentStarted,
    LogLine,
    LoopStateChanged,
    MetricPoint,
    StageChanged,
    Warning,
)
from agents.seeds import combine as combine_seeds
from agents.yardstick import (
    Yardstick,
    baseline_key,
    baselines_path,
    is_complete,
    load_baselines,
    make_yardstick,
    missing_reason,
    needs_rescore,
    rescore_lab,
    score,
)
from agents.judge import BuiltinJudge, LLMJudge
from agents.llm import CallRecorder, LLMError, LLMSpec, parse_llm_spec
from agents.llm_session import LLMSession, fallback, tally
from agents.researcher import (
    LLMResearcher,
    Proposal,
    Rejection,
    ResearchContext,
    ResearchError,
    Researcher,
)
from agents.builtin.researcher import builtin_researcher

__all__ = ["Loop", "LoopStopped", "Command", "LoopSummary", "baseline_key", "STAGES"]

STAGES = ("sample", "research", "novelty", "check", "debug", "approval", "evaluate", "seeds", "analyse",
          "judge", "score", "commit")

_METRIC_RE = re.compile(r"^\[(?P<label>[\w\-]+)\]\s+step\s+(?P<step>\d+).*?loss\s+(?P<loss>[-+0-9.eE]+|nan|inf)")


class LoopStopped(Exception):
    """Raised inside the worker when a stop command is read (the experiment in flight stays
    in its run folder and is redone at the next start)."""


@dataclass
class Command:
    """One command for the worker: ``kind`` in pause, resume, stop, fork, approve, reject, edit,
    budget; ``arg`` its argument (fork: experiment id; reject: reason; edit: code; budget:
    ``{"experiments": n | None, "hours": h | None}``)."""

    kind: str
    arg: Any = None


@dataclass
class LoopSummary:
    """What a run of the loop did."""

    experiments: list[dict[str, Any]] = field(default_factory=list)
    state: str = "finished"
    seconds: float = 0.0
    #: per role: steps answered by the model / the built-in fallback, calls, time, tokens
    #: (``agents.llm_session.tally`` over this run's experiments)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)


def _scale_name(scale: Any) -> str:
    return scale if isinstance(scale, str) else scale.name


class Loop:
    """The research loop over one lab.

    Args:
        lab: an open ``archive.lab.Lab``.
        llm: overrides every role's backend: ``builtin``, ``ollama:MODEL[@HOST]`` or
            ``openai:MODEL@URL`` (default: the lab's ``[llm]`` config).
        mode: ``autonomous`` or ``supervised`` (default: config).
        scale: scale name or ``training.scales.Scale`` (default: config ``[loop] scale``).
        experiments / hours: the budget (None: config; 0: no limit).
        researcher: use this researcher instead of the configured one.
        fallback_researcher: the researcher for a step whose LLM is unavailable when the
            built-in one is not installed (tests pass the stand-in here).
        executor: check/evaluate runner (default ``SandboxExecutor(scale)``).
        baselines: names of ``training.mixers.REFERENCE_MIXERS`` to measure as yardsticks
            (default: all of them; the seed's is always measured).
        retries / backoff_s / timeout_s: LLM transport retries, first backoff, request timeout.
        concurrency: experiments in flight at once (default: the config's ``[executor]
            concurrency``); each runs in its own worker thread, commits go through the
            coordinating thread (the one holding the lab lock), one approval at a time.
    """

    def __init__(
        self,
        lab: Any,
        *,
        llm: str | None = None,
        mode: str | None = None,
        scale: Any = None,
        experiments: int | None = None,
        hours: float | None = None,
        researcher: Researcher | None = None,
        fallback_researcher: Researcher | None = None,
        executor: Executor | None = None,
        baselines: tuple[str, ...] | None = None,
        retries: int = 2,
        backoff_s: float = 2.0,
        timeout_s: float = 300.0,
        seed: int | None = None,
        debug_rounds: int | None = None,
        novelty_rounds: int | None = None,
        cognition: Any = None,
        concurrency: int | None = None,
        lock_timeout: float = 30.0,
    ) -> None:
        cfg = lab.config
        self.lab = lab
        self.path = Path(lab.path)
        self.mode = mode or cfg.loop.mode
        if self.mode not in ("autonomous", "supervised"):
            raise ValueError(f"mode {self.mode!r} is not autonomous or supervised")
        self.scale = scale if scale is not None else cfg.loop.scale
        self.budget_experiments = cfg.loop.experiments if experiments is None else experiments
        self.budget_hours = cfg.loop.hours if hours is None else hours
        self.seed = cfg.loop.seed if seed is None else seed
        # noise-aware evaluation (agents.stats): seeds per design entering the top, and the top
        self.n_seeds = max(1, int(getattr(cfg.loop, "seeds", 1) or 1))
        self.top_k_seeds = max(1, int(getattr(cfg.loop, "top_k_seeds", 5) or 5))
        # early stopping of a candidate's first-seed LM run at its half-way checkpoint (the
        # margin in the seed's seed-to-seed spreads; None: never)
        self.early_stop = (float(getattr(cfg.loop, "early_stop_spreads", 1.0))
                           if getattr(cfg.loop, "early_stop", True) else None)
        self.debug_rounds = int(getattr(cfg.loop, "debug_rounds", 3)) if debug_rounds is None else debug_rounds
        self.novelty_rounds = cfg.loop.novelty_rounds if novelty_rounds is None else novelty_rounds
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.baseline_names = baselines
        self.rng = random.Random(self.seed)
        self.bus = EventBus(self.path / "events.jsonl")
        self.commands: "queue.Queue[Command]" = queue.Queue()
        self.state = "idle"
        self.done = 0
        self._fork: str | None = None
        self._thread: threading.Thread | None = None
        self._t_start = time.monotonic()
        self._cognition = cognition
        self._cognition_loaded = cognition is not None
        self._baselines: dict[str, dict[str, Any]] | None = None
        self._baselines_tried: set[str] = set()
        self.executor = executor or self._make_executor()
        self._stop_after_experiment = False
        self.summary = LoopSummary()
        ex_cfg = getattr(cfg, "executor", None)
        self.concurrency = max(1, int(concurrency if concurrency is not None
                                      else getattr(ex_cfg, "concurrency", 1) or 1))
        # shared between worker threads (concurrency > 1)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._approvals: "queue.Queue[Command]" = queue.Queue()
        self._approval_lock = threading.Lock()
        self._paused = False
        self._stopping = False
        self._started = 0
        self._reserved: set[str] = set()
        self._coordinator: int | None = None
        self._commit_q: "queue.Queue[tuple[Any, queue.Queue]]" = queue.Queue()
        self._novelty_lock = threading.Lock()  # hnswlib: no add while a query runs
        # sampling, research and novelty: one experiment at a time (the "driver" steps:
        # one researcher call at a time, each seeing the proposals already in flight)
        self._research_lock = threading.RLock()
        self._proposals: dict[str, Proposal] = {}  # proposals in flight (checked for novelty too)
        self.lock_timeout = lock_timeout
        # agents per role
        self.role_specs = self._role_specs(llm)
        self.llm = LLMSession(self.role_specs, cfg.llm, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        self.researcher = researcher or self._make_researcher(self.role_specs["researcher"])
        self.fallback_researcher = fallback_researcher
        self.analyst = self._make_role("analyst")
        self.judge_agent = self._make_role("judge")
        self.engineer = Engineer(self.executor, self._make_role("debugger"), self.debug_rounds)

    # ------------------------------------------------------------------ configuration
    def _ollama_host(self) -> str | None:
        """The lab's ``[llm] ollama_host``, unless it is the default and OLLAMA_HOST is set."""
        import os

        from archive.config import LLMConfig

        host = self.lab.config.llm.ollama_host
        if host == LLMConfig().ollama_host and os.environ.get("OLLAMA_HOST"):
            return None  # the client reads OLLAMA_HOST
        return host

    def _role_specs(self, llm: str | None) -> dict[str, LLMSpec]:
        if llm is not None:
            s = parse_llm_spec(llm)
            if s.backend == "ollama" and not s.url:
                s = LLMSpec("ollama", s.model, self._ollama_host())
            return {r: s for r in ("researcher", "analyst", "judge", "debugger")}
        c = self.lab.config.llm
        out = {}
        for role in ("researcher", "analyst", "judge", "debugger"):
            backend = getattr(c, role)
            model = getattr(c, f"{role}_model")
            if backend == "builtin":
                out[role] = LLMSpec("builtin")
            elif backend == "ollama":
                out[role] = LLMSpec("ollama", model, self._ollama_host())
            else:
                out[role] = LLMSpec("openai", model, c.openai_base_url)
        return out

    def _make_executor(self) -> Executor:
        ex_cfg = getattr(self.lab.config, "executor", None)
        if ex_cfg is not None and getattr(ex_cfg, "kind", "local") != "local":
            from agents.ray_executor import make_executor

            # connected now: a missing Ray or an unreachable cluster is a clear error (a
            # ValueError) before the loop starts, not a crash in its first evaluation
            return make_executor(ex_cfg, self.scale, connect=True)
        return SandboxExecutor(self.scale, guards=getattr(self.lab.config, "guards", None),
                               unsafe_no_sandbox=bool(getattr(ex_cfg, "unsafe_no_sandbox", False)))

    def _make_researcher(self, spec: LLMSpec) -> Researcher:
        rs = self.llm.session("researcher")
        if rs is None:
            return builtin_researcher(seed=self.seed)
        return LLMResearcher(rs.backend, session=rs)

    def _make_role(self, role: str) -> Any:
        rs = self.llm.session(role)
        if role == "analyst":
            return BuiltinAnalyst() if rs is None else LLMAnalyst(rs.backend, session=rs)
        if role == "judge":
            return BuiltinJudge() if rs is None else LLMJudge(rs.backend, session=rs)
        return BuiltinDebugger() if rs is None else LLMDebugger(rs.backend, session=rs)

    def negotiate_llms(self) -> list[str]:
        """Negotiate every configured LLM backend once (reachability, model, context, JSON form;
        see ``agents.llm_session``) and return one line per role describing it. Raises
        ``agents.llm.ModelMissing`` when a server does not serve its configured model."""
        self.llm.negotiate(self.emit)
        return self.llm.describe()

    # ------------------------------------------------------------------ public API (any thread)
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` (in the worker thread) for every event; returns unsubscribe."""
        return self.bus.subscribe(callback)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """A blocking iterator of events until the loop ends (or ``timeout`` s of silence)."""
        return self.bus.iterate(timeout)

    def event_queue(self) -> "queue.Queue[Event | None]":
        """A thread-safe queue of every later event (``None`` when the loop has ended)."""
        return self.bus.queue()

    def pause(self) -> None:
        """Pause after the current stage."""
        self.commands.put(Command("pause"))

    def resume(self) -> None:
        """Resume a paused loop."""
        self.commands.put(Command("resume"))

    def stop(self, after: str = "stage") -> None:
        """Stop after the current stage (``after="stage"``: the experiment in flight is redone at
        the next start) or after the experiment in flight is committed (``after="experiment"``)."""
        if after not in ("stage", "experiment"):
            raise ValueError("after must be 'stage' or 'experiment'")
        self.commands.put(Command("stop" if after == "stage" else "stop_after_experiment"))

    def set_mode(self, mode: str) -> None:
        """Switch between ``autonomous`` and ``supervised`` (from the next approval point on)."""
        if mode not in ("autonomous", "supervised"):
            raise ValueError(f"mode {mode!r} is not autonomous or supervised")
        self.commands.put(Command("mode", mode))

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop after the current stage and wait up to ``timeout`` s for the worker (a daemon
        thread: a process may exit while it is still inside a sandboxed run). True if it ended."""
        self.stop()
        return self.join(timeout)

    def fork(self, exp_id: str) -> None:
        """Make ``exp_id`` the parent of the next experiment."""
        self.commands.put(Command("fork", str(exp_id)))

    def approve(self, code: str | None = None) -> None:
        """Supervised mode: evaluate the proposal waiting for approval (with ``code``: the same
        as ``edit(code)``)."""
        self._approvals.put(Command("approve") if code is None else Command("edit", code))

    def reject(self, reason: str = "") -> None:
        """Supervised mode: reject the waiting proposal (committed as rejected)."""
        self._approvals.put(Command("reject", reason))

    def edit(self, code: str) -> None:
        """Supervised mode: replace the waiting proposal's code (re-checked, then evaluated)."""
        self._approvals.put(Command("edit", code))

    def set_budget(self, experiments: int | None = None, hours: float | None = None) -> None:
        """Change the budget (0 = no limit; None = unchanged)."""
        self.commands.put(Command("budget", {"experiments": experiments, "hours": hours}))

    def start(self) -> threading.Thread:
        """Run the loop in a background (daemon) thread and return it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the loop is already running")
        self._thread = threading.Thread(target=self.run, name="asiarch-loop", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread; True when it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ events and commands
    def emit(self, event: Event) -> None:
        """Publish an event."""
        self.bus.emit(event)

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        self.emit(LoopStateChanged(state=state, detail=detail, experiments_done=self.done,
                                   budget_experiments=self.budget_experiments or None,
                                   budget_hours=self.budget_hours or None))

    def _handle(self, cmd: Command) -> None:
        """Apply one command (called with ``self._lock`` held)."""
        if cmd.kind == "pause":
            if not self._paused:
                self._paused = True
                self._state_before_pause = self.state
                self._set_state("paused")
        elif cmd.kind == "resume":
            if self._paused:
                self._paused = False
                self._set_state(getattr(self, "_state_before_pause", "running"))
                self._cond.notify_all()
        elif cmd.kind == "stop":
            if not self._stopping:
                self._stopping = True
                self._set_state("stopping")
            self._cond.notify_all()
        elif cmd.kind == "stop_after_experiment":
            self._stop_after_experiment = True
            self._set_state(self.state, "stopping after the experiment in flight")
        elif cmd.kind == "mode":
            self.mode = cmd.arg
            self._set_state(self.state, f"mode {cmd.arg}")
        elif cmd.kind == "fork":
            if cmd.arg not in self.lab.store:
                self.emit(Warning(message=f"fork: there is no experiment {cmd.arg}", source="loop"))
            else:
                self._fork = cmd.arg
                self.emit(LogLine(source="loop", line=f"next parent: {cmd.arg}"))
        elif cmd.kind == "budget":
            a = cmd.arg or {}
            if a.get("experiments") is not None:
                self.budget_experiments = int(a["experiments"])
            if a.get("hours") is not None:
                self.budget_hours = float(a["hours"])
            self._set_state(self.state, "budget changed")
        else:
            self.emit(Warning(message=f"unknown command {cmd.kind!r}", source="loop"))

    def _drain(self) -> None:
        with self._lock:
            while True:
                try:
                    cmd = self.commands.get_nowait()
                except queue.Empty:
                    return
                self._handle(cmd)

    def poll(self) -> None:
        """Apply pending commands (called by the workers between stages): blocks while paused,
        raises ``LoopStopped`` after a stop command."""
        self._drain()
        with self._cond:
            while self._paused and not self._stopping:
                self._cond.wait(0.1)
                self._drain()
            if self._stopping:
                raise LoopStopped()

    def _await_approval(self, exp_id: str, name: str, motivation: str, code: str,
                        checks: list[dict[str, Any]]) -> Decision:
        with self._approval_lock:  # one proposal waits at a time
            while True:  # answers given while nothing waited are stale
                try:
                    stale = self._approvals.get_nowait()
                except queue.Empty:
                    break
                self.emit(Warning(message=f"{stale.kind}: no proposal was waiting for approval", source="loop"))
            t0 = time.perf_counter()
            self.emit(StageChanged(exp_id=exp_id, stage="approval", status="started"))
            self.emit(ApprovalRequested(exp_id=exp_id, name=name, motivation=motivation, code=code, checks=checks))
            with self._lock:
                self._set_state("waiting_approval", f"{exp_id} {name}")
            while True:
                self.poll()
                try:
                    cmd = self._approvals.get(timeout=0.1)
                except queue.Empty:
                    continue
                if cmd.kind == "approve":
                    dec = Decision("approve")
                elif cmd.kind == "reject":
                    dec = Decision("reject", reason=cmd.arg or "rejected by the user")
                else:
                    dec = Decision("edit", code=cmd.arg)
                with self._lock:
                    self._set_state("running")
                self.emit(StageChanged(exp_id=exp_id, stage="approval", status="finished", detail=dec.action,
                                       duration_s=time.perf_counter() - t0))
                return dec

    # ------------------------------------------------------------------ lab helpers
    def _runs(self) -> Path:
        p = self.path / "runs"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def _save_state(self, run_dir: Path, state: dict[str, Any]) -> None:
        from archive.config import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "state.json", json.dumps(state, indent=1, default=str))

    def in_flight(self) -> dict[str, Any] | None:
        """The saved state of an experiment that was started but never committed, if any."""
        found = []
        for st in sorted(self._runs().glob("*/state.json")):
            try:
                state = json.loads(st.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            exp_id = state.get("id")
            if not exp_id:
                continue
            if exp_id in self.lab.store:
                st.unlink(missing_ok=True)  # committed before the kill: nothing to redo
                continue
            if exp_id in self._reserved:  # being run by another worker
                continue
            found.append(state)
        return found[0] if found else None

    def cognition_base(self) -> Any:
        """The cognition base (loaded once; None if it cannot be loaded)."""
        if not self._cognition_loaded:
            self._cognition_loaded = True
            try:
                from corpus.retrieval import CognitionBase

                emb = getattr(getattr(self.lab, "novelty", None), "embedder", None)
                self._cognition = CognitionBase.load(embedder=emb)
            except Exception as exc:  # a missing corpus never stops the loop
                self.emit(Warning(message=f"cognition base unavailable: {exc}", source="loop"))
                self._cognition = None
        return self._cognition

    def _commit(self, record: Any) -> str:
        """Commit to the archive, then the derived stores (index, novelty, candidates). From a
        worker thread the commit is handed to the coordinating thread (which holds the lab lock)."""
        if self._coordinator is not None and threading.get_ident() != self._coordinator:
            reply: queue.Queue = queue.Queue()
            self._commit_q.put((record, reply))
            ok, value = reply.get()
            if not ok:
                raise value
            return value
        return self._commit_here(record)

    def _commit_here(self, record: Any) -> str:
        with self._novelty_lock:
            if not record.promotion:
                self._decide_promotion(record)
            return self._commit_locked(record)

    def _commit_locked(self, record: Any) -> str:
        commit = getattr(self.lab, "commit", None)
        if callable(commit):
            return commit(record)
        sha = self.lab.store.commit(record)
        state = self.lab.store.state()
        try:
            self.lab.index.add(record, sha, state=state)
        except TypeError:
            self.lab.index.add(record, sha)
        self.lab.novelty.add(record.id, record.motivation or record.name, state=state)
        return sha

    # ------------------------------------------------------------------ baselines and seed
    def _baseline_file(self) -> Path:
        return baselines_path(self.path, self.scale)

    def _baseline_names(self) -> list[str]:
        """The seed first, then the configured reference mixers."""
        from training.mixers import REFERENCE_MIXERS, SEED_MIXER

        names = list(self.baseline_names) if self.baseline_names is not None else list(REFERENCE_MIXERS)
        names = [n for n in names if n != SEED_MIXER]
        return [SEED_MIXER, *names]

    def _cached_baselines(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._baselines is None:
                self._baselines = load_baselines(self.path, self.scale)
            return self._baselines

    def _all_seeds(self, metrics: dict[str, Any] | None) -> bool:
        """A complete measurement on every seed of the schedule (``[loop] seeds``), made under
        this version's evaluation protocol (``training.evaluate.EVAL_VERSION``)."""
        from training.evaluate import EVAL_VERSION, eval_version

        if not is_complete(metrics) or eval_version(metrics) != EVAL_VERSION:
            return False
        got = {e.get("seed") for e in ((metrics or {}).get("seeds") or [metrics]) if e.get("status") == "ok"}
        return set(self._seed_list()) <= got

    def baselines(self) -> dict[str, dict[str, Any]]:
        """The reference baselines measured so far at the loop's scale (complete measurements on
        every seed of the schedule only; cached in ``lab/baselines/<scale>.json``). Measures
        nothing: the seed is measured by :meth:`measure_seed` before any experiment, the others
        between experiments (:meth:`measure_pending_baselines`)."""
        return {n: m for n, m in self._cached_baselines().items() if self._all_seeds(m)}

    def measure_baseline(self, name: str, index: int = 0, total: int = 0) -> dict[str, Any]:
        """Evaluate one reference mixer at the loop's scale, store and return its metrics."""
        from archive.config import atomic_write_text
        from training.mixers import REFERENCE_MIXERS, SEED_MIXER

        self.poll()
        is_seed = name == SEED_MIXER
        t0 = time.perf_counter()
        self.emit(BaselineProgress(name=name, status="started", seed=is_seed, index=index, total=total))
        self.emit(StageChanged(stage="baseline", status="started", detail=name))
        rd = self._runs() / "baselines" / baseline_key(self.scale) / name
        seeds = self._seed_list()
        before = self._cached_baselines().get(name) or {}
        # runs of this reference already measured on seeds of the schedule (under this evaluation
        # protocol) are kept
        from training.evaluate import EVAL_VERSION, eval_version

        runs = {r.get("seed"): r for r in (before.get("seeds") or [before])
                if r.get("status") == "ok" and r.get("seed") in seeds and not r.get("partial")
                and eval_version(r) == EVAL_VERSION}
        error = ""
        # the same seeds as every design in the top, so the yardstick has a spread. With nothing
        # measured yet, the first seed runs alone (a reference that fails here costs one run, not
        # three); the others then run side by side: on 2 cores 3 seeds take two rounds either way.
        todo = [sd for sd in seeds if sd not in runs]
        waves = [todo[:1], todo[1:]] if not runs else [todo]
        for wave in (w for w in waves if w):
            results = self._evaluate_seeds(Path(REFERENCE_MIXERS[name]), wave, lambda sd: rd / f"seed-{sd}", None,
                                           lambda l: self.emit(LogLine(source="train", line=l)),
                                           trusted=True)  # our own code
            for sd in wave:
                res = results[sd]
                runs[sd] = res.metrics or {"status": "error", "error": res.error, "partial": True, "seed": sd}
                runs[sd].setdefault("seed", sd)
                error = error or res.error
            if not all(is_complete(runs[sd]) for sd in wave):
                break
        metrics = combine_seeds([runs[sd] for sd in seeds if sd in runs])
        with self._lock:
            cached = self._cached_baselines()
            cached[name] = metrics
            path = self._baseline_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(cached, indent=1, default=str))
        ok = is_complete(metrics)
        pm = metrics.get("probe_mean")
        detail = (f"{name}: probe mean {pm:.3f}" if isinstance(pm, (int, float)) else f"{name}: {metrics.get('status')}")
        if not ok:
            detail += f" ({metrics.get('stop_reason') or metrics.get('error') or error or 'incomplete'})"
        detail += f" ({metrics.get('n_seeds')} seeds)"
        self.emit(StageChanged(stage="baseline", status="finished" if ok else "failed", detail=detail[:500],
                               duration_s=time.perf_counter() - t0))
        self.emit(BaselineProgress(name=name, status="finished", seed=is_seed, index=index, total=total,
                                   result=str(metrics.get("status")), detail=detail[:500]))
        return metrics

    def yardstick(self) -> Yardstick | None:
        """The yardstick (the seed's complete metrics at the loop's scale), or None."""
        from training.mixers import SEED_MIXER

        seed = self._cached_baselines().get(SEED_MIXER)
        if not self._all_seeds(seed):
            return None
        return make_yardstick(seed, self.scale)

    def yardstick_missing(self) -> str | None:
        """Why there is no yardstick (None when there is one)."""
        from training.mixers import SEED_MIXER

        seed = self._cached_baselines().get(SEED_MIXER)
        why = missing_reason(seed, self.scale)
        if why is None and not self._all_seeds(seed):
            return f"the seed has not been measured on all {self.n_seeds} seeds yet"
        return why

    def measure_seed(self, attempts: int = 2) -> Yardstick | None:
        """Measure the seed at the loop's scale unless a complete measurement is cached (up to
        ``attempts`` tries); experiments wait for it. Returns the yardstick, or None."""
        from training.mixers import SEED_MIXER

        for _ in range(max(1, attempts)):
            ys = self.yardstick()
            if ys is not None:
                return ys
            with self._lock:
                self._set_state("running", f"measuring the seed ({SEED_MIXER}) at scale "
                                           f"{baseline_key(self.scale)}: experiments wait for it")
            self.measure_baseline(SEED_MIXER)
        return self.yardstick()

    def pending_baselines(self) -> list[str]:
        """Reference baselines (not the seed) without a complete measurement that this run has
        not tried yet."""
        cached = self._cached_baselines()
        return [n for n in self._baseline_names()[1:]
                if not self._all_seeds(cached.get(n)) and n not in self._baselines_tried]

    def measure_pending_baselines(self, limit: int | None = None) -> int:
        """Measure up to ``limit`` (None: all) pending reference baselines, one at a time per
        caller (several workers may each take one); returns how many were measured."""
        done = 0
        while limit is None or done < limit:
            with self._lock:
                pending = self.pending_baselines()
                if not pending:
                    return done
                name = pending[0]
                self._baselines_tried.add(name)
                others = self._baseline_names()[1:]
                index = len([n for n in others if n in self._baselines_tried])
            self.measure_baseline(name, index=index, total=len(others))
            done += 1
        return done

    def _measure_remaining_baselines(self) -> None:
        """Every pending comparison, as many at once as experiments may be in flight."""
        if self.concurrency > 1 and len(self.pending_baselines()) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="asiarch-baseline") as pool:
                for fut in [pool.submit(self.measure_pending_baselines) for _ in range(self.concurrency)]:
                    fut.result()  # LoopStopped or an executor error propagates
        else:
            self.measure_pending_baselines()

    def seed_baseline(self) -> dict[str, Any] | None:
        """The seed mixer's complete metrics at this scale (the yardstick), or None."""
        ys = self.yardstick()
        return ys.metrics if ys is not None else None

    def rescore_if_needed(self) -> dict[str, Any] | None:
        """Re-score the archive when its fitness was computed against another yardstick (a
        re-measured seed, another scale, an upgrade); returns the re-score report or None."""
        ys = self.yardstick()
        if not hasattr(self.lab, "apply_scores") or not needs_rescore(self.lab, ys):
            return None
        with self._novelty_lock:
            report = rescore_lab(self.lab, self.scale)
        self.emit(LogLine(source="loop", line=(
            f"re-scored {report['rescored']} experiments against yardstick {report['yardstick']}"
            + (f"; best moved {report['best_before']} -> {report['best']}" if report["best_moved"] else ""))))
        return report

    def ensure_seed_measured(self) -> None:
        """A new lab's seed (committed unmeasured) gets its metrics from the seed baseline
        (the same file evaluated at the same scale and seed) and is committed as measured,
        once per scale."""
        store = self.lab.store
        from archive.record import SEED_ID

        if SEED_ID not in store:
            return
        ys = self.yardstick()
        if ys is None:
            return
        seed = store.get(SEED_ID)
        measured = [r for r in store.all() if r.extra.get("measures") == SEED_ID
                    and (r.metrics or {}).get("scale") == ys.scale_name]
        if measured or ((seed.metrics or {}).get("scale") == ys.scale_name and is_complete(seed.metrics)):
            return
        base = ys.metrics
        rec = dataclasses.replace(
            seed, id=store.next_id(), parent=SEED_ID, references=[], metrics=base,
            yardstick=ys.version, scale=_scale_name(self.scale), created=_utc(),
            analysis="The seed design measured at this scale: the yardstick of every fitness.",
            problem=seed.problem or "recall probes and loss of the seed at this scale",
            extra={**seed.extra, "measures": SEED_ID}, transcript=[], timings={})
        rec.slug = ""
        rec.__post_init__()
        rec.reproduce = self._reproduce_info(rec)
        # the seed is judged by the same judge as every candidate (not a flat 0.5)
        seed_recorder = CallRecorder(exp_id=rec.id, emit=self.emit)
        verdict = self._judge_record(rec, None, base, seed_recorder)
        rec.transcript = seed_recorder.transcript
        self._score(rec, verdict, ys)
        fitness, comps = rec.fitness, rec.fitness_components
        sha = self._commit(rec)
        self.emit(ExperimentFinished(exp_id=rec.id, name=rec.name, status="accepted", fitness=fitness,
                                     fitness_components=comps, metrics=_summary(base), sha=sha,
                                     reason="seed measured",
                                     promotion=str((rec.promotion or {}).get("outcome") or "")))

    # ------------------------------------------------------------------ the loop
    def budget_left(self) -> bool:
        """Whether another experiment may start."""
        if self._stop_after_experiment:
            return False
        if self.budget_experiments and self._started >= self.budget_experiments:
            return False
        if self.budget_hours and (time.monotonic() - self._t_start) >= self.budget_hours * 3600:
            return False
        return True

    def run(self) -> LoopSummary:
        """Run until the budget is spent or a stop command (blocking; ``start()`` runs it in a
        thread). Never raises for an experiment's failure; returns a summary."""
        t0 = time.monotonic()
        self._t_start = t0
        self._coordinator = threading.get_ident()
        lock = getattr(self.lab, "lock", None)
        ctx = lock(timeout=self.lock_timeout) if callable(lock) else _NullCtx()
        try:
            with ctx:
                with self._lock:
                    self._set_state("running")
                try:
                    self.llm.negotiate(self.emit)  # once per session (the CLI may have done it)
                    self.poll()
                    if self.measure_seed() is None:
                        why = self.yardstick_missing() or "the seed could not be measured"
                        self.emit(Warning(source="loop", message=(
                            f"no yardstick: {why}. No experiment is scored without a complete measurement "
                            "of the seed at the lab's scale; experiments wait for it (see the seed's log in "
                            f"runs/baselines/, then start again)")))
                        with self._lock:
                            self.summary.state = "stopped"
                            self._set_state("stopped", f"no yardstick: {why}")
                        return self.summary
                    self.rescore_if_needed()
                    self.ensure_seed_measured()
                    with self._novelty_lock:
                        self.lab.novelty  # load it here, not in two workers at once  # noqa: B018
                    with self._lock:
                        self._set_state("running")
                    if self.concurrency == 1:
                        self._worker()
                    else:
                        self._run_workers()
                    if not self._stop_after_experiment:
                        self._measure_remaining_baselines()  # the comparisons not measured yet
                    with self._lock:
                        if self._stop_after_experiment:
                            self.summary.state = "stopped"
                            self._set_state("stopped", "after the experiment in flight")
                        else:
                            self.summary.state = "finished"
                            self._set_state("finished")
                except LoopStopped:
                    with self._lock:
                        self.summary.state = "stopped"
                        self._set_state("stopped")
        except Exception as exc:  # the lab lock or the archive itself failed
            self.summary.state = "error"
            self.emit(Warning(message=f"the loop ended: {type(exc).__name__}: {exc}", source="loop"))
            self._set_state("stopped", str(exc))
        finally:
            self._coordinator = None
            self.summary.seconds = round(time.monotonic() - t0, 2)
            self.bus.close()
        return self.summary

    def _worker(self) -> None:
        """Run experiments while the budget allows (one worker; several when concurrency > 1)."""
        crashes = 0
        first = True
        while True:
            self.poll()
            if not first:  # between experiments: one of the comparisons not measured yet
                with self._lock:
                    more = self.budget_left()
                if more:
                    self.measure_pending_baselines(limit=1)
                    self.poll()
            first = False
            with self._lock:
                if not self.budget_left():
                    return
                self._started += 1
            try:
                rec = self.run_experiment()
                crashes = 0
            except (LoopStopped, KeyboardInterrupt):
                raise
            except Exception as exc:  # a bug: report it; give up after 3 in a row
                with self._lock:
                    self._started -= 1  # it stays in flight and is redone
                crashes += 1
                self.emit(Warning(source="loop", message=(
                    f"the experiment crashed: {type(exc).__name__}: {exc}\n" + traceback.format_exc()[-2000:])))
                if crashes >= 3:
                    raise
                continue
            with self._lock:
                self.done += 1
                self.summary.experiments.append({
                    "id": rec.id, "name": rec.name, "status": rec.status, "fitness": rec.fitness,
                    "probe_mean": (rec.metrics or {}).get("probe_mean"),
                    "val_loss": (rec.metrics or {}).get("val_loss"),
                    "seconds": round(float(rec.timings.get("total", 0.0)), 2)})
                tally([rec], into=self.summary.agents)

    def _run_workers(self) -> None:
        """``concurrency`` worker threads; this (coordinating) thread makes their commits."""
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self._worker()
            except LoopStopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the coordinator
                errors.append(exc)
                with self._cond:
                    self._stopping = True
                    self._cond.notify_all()

        threads = [threading.Thread(target=target, name=f"asiarch-worker-{i}", daemon=True)
                   for i in range(self.concurrency)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) or not self._commit_q.empty():
            try:
                record, reply = self._commit_q.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                reply.put((True, self._commit_here(record)))
            except Exception as exc:  # the worker re-raises it
                reply.put((False, exc))
        if errors:
            raise errors[0]
        if self._stopping:
            raise LoopStopped()

    def _next_id(self) -> str:
        """The next free id, past the archive's and those reserved by workers in flight."""
        from archive.record import format_id

        taken = [int(i) for i in self.lab.store.ids()] + [int(i) for i in self._reserved]
        return format_id(max(taken, default=-1) + 1)

    def run_experiment(self) -> Any:
        """Run one experiment from sampling to commit (or redo the one found in flight) and
        return its committed record. ``LoopStopped`` propagates."""
        with self._lock:
            saved = self.in_flight()
            exp_id = saved["id"] if saved is not None else self._next_id()
            self._reserved.add(exp_id)
            fork, self._fork = self._fork, None
        try:
            return self._run_experiment(exp_id, saved, fork)
        finally:
            with self._lock:
                self._reserved.discard(exp_id)
                self._proposals.pop(exp_id, None)

    def _run_experiment(self, exp_id: str, saved: dict[str, Any] | None, fork: str | None) -> Any:
        from archive.record import ExperimentRecord

        store = self.lab.store
        timings: dict[str, float] = {}
        t_exp = time.perf_counter()

        def stage(name: str) -> "_Stage":
            return _Stage(self, exp_id, name, timings)

        with self._research_lock:  # sampling, research, novelty: one experiment at a time
            # -- 1. sample
            if saved is not None:
                run_dir = self._runs() / exp_id
                with stage("sample"):
                    parent = store.get(saved["parent"])
                    references = [store.get(r) for r in saved.get("references", []) if r in store]
                self.emit(ExperimentStarted(exp_id=exp_id, parent=parent.id, references=[r.id for r in references],
                                            scale=_scale_name(self.scale), mode=self.mode, redo=True))
            else:
                run_dir = self._runs() / exp_id
                if run_dir.exists():
                    shutil.rmtree(run_dir, ignore_errors=True)
                with stage("sample"):
                    if fork is not None:
                        parent = store.get(fork)
                    else:
                        parent = self._measured(self.lab.candidates.sample_parent(self.rng))
                    references = [self._measured(r) for r in
                                  self.lab.candidates.sample_references(self.rng, exclude={parent.id})]
                    references = [r for r in references if r.id != parent.id]
                self.emit(ExperimentStarted(exp_id=exp_id, parent=parent.id, references=[r.id for r in references],
                                            scale=_scale_name(self.scale), mode=self.mode))
                saved = {"id": exp_id, "parent": parent.id, "references": [r.id for r in references],
                         "stage": "research", "started": _utc()}
                self._save_state(run_dir, saved)
            recorder = CallRecorder(exp_id=exp_id, emit=self.emit)
            record = ExperimentRecord(id=exp_id, name="unnamed", parent=parent.id,
                                      references=[r.id for r in references], scale=_scale_name(self.scale),
                                      seed=self.seed, transcript=recorder.transcript, timings=timings)
            record.extra["agent_steps"] = recorder.steps  # who answered each agent step
            record.versions = _versions()
            self.poll()

            # -- 2/3. research and novelty
            proposal: Proposal | None = None
            researcher_spec = getattr(self.researcher, "spec", "none")
            failure = ""
            if saved.get("proposal"):
                p = saved["proposal"]
                proposal = Proposal(p["name"], p["motivation"], p["code"], p.get("extra") or {},
                                    trusted=bool(p.get("trusted", False)))
                researcher_spec = saved.get("researcher", researcher_spec)
                recorder.transcript.extend(saved.get("transcript") or [])  # the calls before the crash
                record.extra["redone_after_crash"] = True
                self.emit(LogLine(exp_id=exp_id, source="loop", line="redoing the saved proposal"))
            else:
                cog_hits = self._cognition_for(parent)
                ctx = ResearchContext(
                    exp_id=exp_id, parent=parent, references=references, cognition=cog_hits,
                    failures=self._recent_failures(), history=self._history(), baselines=self.baselines(),
                    scale=_scale_name(self.scale), param_budget=_param_budget(self.scale),
                    rng=random.Random(f"{self.seed}-{exp_id}"), recorder=recorder, lab=self.lab)
                rounds = 0
                while True:
                    with stage("research") as st:
                        try:
                            proposal, researcher_spec = self._propose(ctx)
                        except (LLMError, ResearchError) as exc:
                            failure = f"research failed: {exc}"
                            st.fail(str(exc))
                            proposal = None
                        except Exception as exc:  # a researcher's bug fails the step, not the loop
                            failure = f"research failed: {type(exc).__name__}: {exc}"
                            record.extra["traceback"] = traceback.format_exc()[-4000:]
                            st.fail(f"{type(exc).__name__}: {exc}")
                            proposal = None
                    if proposal is None:
                        break
                    self.poll()
                    with stage("novelty") as st:
                        novel, near = self._novelty(proposal)
                        if not novel and near is not None:
                            st.fail(f"too close to {near[0]} (similarity {near[1]:.2f})")
                    if novel or near is None:
                        break
                    nrec = self._neighbour(near[0])
                    ctx.rejections.append(Rejection(proposal, "not novel", near[0], nrec.name, nrec.motivation,
                                                    float(near[1])))
                    rounds += 1
                    if rounds > self.novelty_rounds:
                        failure = (f"not novel after {rounds} proposals: the last was too close to experiment "
                                   f"{near[0]} ({near[1]:.2f})")
                        break
                    self.poll()
                record.extra["novelty_rejections"] = [
                    {"name": r.proposal.name, "motivation": r.proposal.motivation, "neighbour": r.neighbour_id,
                     "similarity": r.similarity} for r in ctx.rejections]
                record.cognition = [str(e.id) for e, _ in cog_hits]
                if proposal is not None and not failure:
                    saved.update({"proposal": dataclasses.asdict(proposal), "researcher": researcher_spec,
                                  "stage": "check", "novelty_rejections": record.extra["novelty_rejections"],
                                  "cognition": record.cognition, "transcript": list(recorder.transcript)})
                    self._save_state(run_dir, saved)
            record.extra.setdefault("novelty_rejections", saved.get("novelty_rejections", []))
            if saved.get("cognition"):
                record.cognition = list(saved["cognition"])
            record.researcher = researcher_spec
            if proposal is not None:
                record.name = proposal.name
                record.slug = ""
                record.__post_init__()
                record.motivation = proposal.motivation
                record.code = proposal.code
                self._apply_extra(record, proposal.extra)
            if proposal is None or failure:
                status = "rejected" if failure.startswith("not novel") else "failed"
                if proposal is None:
                    record.name = "research-failed"
                    record.slug = ""
                    record.__post_init__()
                return self._finish(record, status, failure, run_dir, t_exp)
            self._proposals[exp_id] = proposal
        self.poll()

        # -- 4–6. check, approval, evaluate (Engineer + Debugger)
        baseline = self.seed_baseline()
        def approval(code: str, checks: list[dict[str, Any]]) -> Decision:
            self.poll()  # a mode switch may have just arrived
            if self.mode != "supervised":
                return Decision("approve")
            return self._await_approval(exp_id, proposal.name, proposal.motivation, code, checks)

        def on_stage(name: str, status: str, detail: str) -> None:
            self.emit(StageChanged(exp_id=exp_id, stage=name, status=status, detail=detail[:500]))
            if status in ("finished", "failed"):
                self.poll()

        def on_line(source: str, line: str) -> None:
            self.emit(LogLine(exp_id=exp_id, source=source, line=line))
            m = _METRIC_RE.match(line)
            if m:
                try:
                    self.emit(MetricPoint(exp_id=exp_id, name=f"{m['label']}_loss", step=int(m["step"]),
                                          value=float(m["loss"])))
                except ValueError:
                    pass

        t0 = time.perf_counter()
        out = self.engineer.develop(proposal.code, run_dir, motivation=proposal.motivation, seed=self.seed,
                                    baseline=baseline, recorder=recorder, approval=approval,
                                    on_stage=on_stage, on_line=on_line, trusted=proposal.trusted,
                                    early_stop=self.early_stop)
        eng_time = time.perf_counter() - t0
        for k, v in out.timings.items():
            timings[k] = round(timings.get(k, 0.0) + v, 4)
        timings["engineer_overhead"] = round(max(0.0, eng_time - sum(out.timings.values())), 4)
        record.code = out.code
        record.checks = out.checks
        record.metrics = out.metrics or {}
        record.train_log = out.log_tail[-4000:]
        record.extra["debug_rounds"] = out.rounds
        record.extra["edited_by_user"] = out.edited
        if out.status == "rejected":
            return self._finish(record, "rejected", out.error, run_dir, t_exp)
        if out.status == "check_failed":
            return self._finish(record, "failed", f"check failed: {out.error}", run_dir, t_exp)
        self.poll()

        # -- 6b. successive halving: a rung-0 result that would enter the top earns more seeds
        if record.metrics:
            with stage("seeds") as st:
                self._more_seeds(record, run_dir, baseline, on_line, st,
                                 trusted=proposal.trusted and out.code == proposal.code)
            self.poll()

        # -- 7. analyse
        siblings = [store.get(c) for c in store.children(parent.id)]
        with stage("analyse") as st:
            try:
                if isinstance(self.analyst, BuiltinAnalyst):
                    recorder.step("analyst", "builtin", "builtin")
                analysis = self.analyst.analyse(record, parent, siblings, self.baselines(), recorder)
            except Exception as exc:  # malformed twice (LLMError) or an analyst bug: rule-based
                st.fail(str(exc))
                analysis = BuiltinAnalyst().analyse(record, parent, siblings, self.baselines(), recorder)
                record.extra["analyst_failure"] = str(exc)
        record.analysis = analysis.text()
        record.problem = analysis.problem
        record.extra["ablations"] = analysis.ablations
        self.poll()

        # -- 8. judge and score
        with stage("judge") as st:
            verdict = self._judge_record(record, parent, baseline, recorder, st)
        status = {"ok": "accepted", "too_slow": "too_slow", "stopped_early": "stopped_early"}.get(out.status, "failed")
        with stage("score"):
            ys = self.yardstick()
            comps = self._score(record, verdict, ys, status)
            if comps.get("leak_suspected"):
                self.emit(Warning(exp_id=exp_id, source="score", message=(
                    f"{exp_id}: validation loss more than 10% below the seed baseline's: suspected leak of "
                    "future tokens, not counted as a win")))
            if ys is None and status == "accepted":
                self.emit(Warning(exp_id=exp_id, source="score", message=(
                    f"{exp_id}: not scored: {comps.get('unscored')}")))
        reason = ""
        if status == "too_slow":
            tp = (record.metrics or {}).get("throughput_vs_seed")
            reason = f"too slow: {out.error}" + (f" (throughput {tp:.2f}x the seed's)" if isinstance(tp, (int, float)) else "")
        elif status == "stopped_early":
            reason = out.error if out.error.startswith("stopped early") else f"stopped early: {out.error}"
        elif status == "failed":
            reason = f"evaluation failed: {out.error}"
        return self._finish(record, status, reason, run_dir, t_exp)

    # ------------------------------------------------------------------ seeds and promotion
    def _seed_list(self) -> list[int]:
        """The seeds of a design measured in full (and of the yardstick): seed, seed+1, ..."""
        from agents.stats import design_seeds

        return design_seeds(self.seed, self.n_seeds)

    def seed_parallelism(self) -> int:
        """How many evaluations of one design's seeds run at once: the machine's cores shared by
        the loop's workers (each sandboxed evaluation uses one thread; see ``Limits``)."""
        import os

        return max(1, (os.cpu_count() or 1) // max(1, self.concurrency))

    def _evaluate_seeds(self, code_path: Path, seeds: list[int], run_dir: Callable[[int], Path],
                        baseline: dict[str, Any] | None, on_line: Callable[[str], None],
                        trusted: bool) -> dict[int, Any]:
        """Evaluate ``code_path`` on each of ``seeds`` (``run_dir(seed)`` each), up to
        :meth:`seed_parallelism` at once; returns ``{seed: ExecResult}``. The runs are independent
        fixed-work evaluations (one thread each), so running them side by side changes their wall
        time only, never their metrics."""
        def one(sd: int) -> Any:
            self.poll()
            return with_trust(self.executor.evaluate, code_path, run_dir(sd), sd, baseline,
                              on_line=on_line, trusted=trusted)

        width = min(len(seeds), self.seed_parallelism())
        if width <= 1:
            return {sd: one(sd) for sd in seeds}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="asiarch-seed") as pool:
            futures = {sd: pool.submit(one, sd) for sd in seeds}
            return {sd: fut.result() for sd, fut in futures.items()}

    def _more_seeds(self, record: Any, run_dir: Path, baseline: dict[str, Any] | None,
                    on_line: Callable[[str, str], None], st: "_Stage", trusted: bool = False) -> None:
        """Successive halving (agents.stats): ``record.metrics`` (rung 0, one seed) become the
        multi-seed metrics when the rung-0 result would enter the top ``top_k_seeds`` designs
        measured on several seeds, else the one-seed form (``seeds`` with one entry)."""
        from agents.seeds import screen, screen_of
        from agents.stats import needs_more_seeds

        rung0 = dict(record.metrics)
        rung0.setdefault("seed", self.seed)
        seeds = [sd for sd in self._seed_list() if sd != rung0.get("seed")]
        runs = [rung0]
        value = screen(rung0, baseline)
        top = [screen_of(d.get("fitness_components")) for d in self.lab.index.all()
               if d.get("status") == "accepted" and int(d.get("n_seeds") or 0) >= 2]
        if seeds and rung0.get("status") == "ok" and needs_more_seeds(value, top, self.top_k_seeds):
            self.emit(LogLine(exp_id=record.id, source="loop",
                              line=f"rung 0 would enter the top {self.top_k_seeds}: evaluating seeds "
                                   f"{', '.join(map(str, seeds))} ({min(len(seeds), self.seed_parallelism())} at once)"))
            results = self._evaluate_seeds(run_dir / "mixer.py", seeds, lambda sd: run_dir / f"eval_seed{sd}",
                                           baseline, lambda l: on_line("train", l), trusted)
            for sd in seeds:
                res = results[sd]
                m = res.metrics or {"status": "error", "error": res.error, "seed": sd}
                m.setdefault("seed", sd)
                runs.append(m)
        elif seeds and rung0.get("status") == "stopped_early":
            st.fail("stopped early at the half-way checkpoint: stays at one seed")
        elif seeds:
            st.fail(f"rung 0 stays at one seed (measured terms {value if value is None else round(value, 4)} "
                    f"below the top {self.top_k_seeds})")
        record.metrics = combine_seeds(runs)
        record.extra["rung"] = 0 if len(runs) == 1 else 1

    def _score(self, record: Any, verdict: dict[str, Any] | None, ys: Yardstick | None,
               status: str = "accepted") -> dict[str, Any]:
        """Score ``record`` against the yardstick (agents.yardstick.score): the fitness is the
        mean of its per-seed fitness values, with ``fitness_interval`` and ``fitness_seeds``;
        None (with ``components["unscored"]``) without a yardstick or complete metrics."""
        fitness, comps = score(record.metrics, verdict, ys, status, None if ys is not None else self.yardstick_missing())
        record.fitness = fitness
        record.fitness_components = comps
        record.fitness_interval = comps.get("fitness_interval")
        record.fitness_seeds = dict(comps.get("fitness_seeds") or {})
        record.yardstick = ys.version if ys is not None else ""
        return comps

    def _decide_promotion(self, record: Any) -> None:
        """The promotion rule against the current ``best`` (run in the committing thread, so
        concurrent experiments are compared with the best that is current at their commit)."""
        from agents.stats import promote

        if record.status != "accepted" or record.fitness is None:
            record.promotion = {"promoted": False, "outcome": "unmeasured", "rule": "", "text": "not measured",
                                "incumbent": None}
            return
        inc = self.lab.store.best()
        inc_seeds = None
        if inc is not None:
            book = getattr(self.lab, "scores", None)
            rescored = book.get(inc.id) if book is not None else None
            fs = inc.fitness_seeds
            fit = inc.fitness
            if rescored is not None:  # the incumbent as re-scored against the current yardstick
                fs = (rescored.get("fitness_components") or {}).get("fitness_seeds") or {}
                fit = rescored.get("fitness")
            inc_seeds = ({int(k): v for k, v in fs.items()} if fs
                         else ({int(inc.seed): fit} if fit is not None else None))
        verdict = promote({int(k): v for k, v in record.fitness_seeds.items()}, inc_seeds)
        record.promotion = {**verdict.to_dict(), "incumbent": inc.id if inc is not None else None}

    def _reproduce_info(self, record: Any) -> dict[str, Any]:
        """``record.reproduce`` (agents.repro.environment) for an evaluated record."""
        from agents.repro import environment
        from agents.seeds import per_seed

        limits = getattr(self.executor, "limits", None)
        seeds = [int(e["seed"]) for e in per_seed(record.metrics) if isinstance(e.get("seed"), int)]
        try:
            return environment(self.scale, seeds or [self.seed], self.seed, self.lab.config,
                               threads=getattr(limits, "threads", None))
        except Exception as exc:  # never lose the experiment over its environment record
            return {"error": f"{type(exc).__name__}: {exc}"}

    # ------------------------------------------------------------------ steps
    def _judge_record(self, record: Any, parent: Any, baseline: dict[str, Any] | None,
                      recorder: CallRecorder | None, st: "_Stage | None" = None) -> dict[str, Any] | None:
        """The judge's verdict on ``record`` (candidates and the seed alike); None (s_judge
        unmeasured, 0.5) when the judge fails twice, with the failure in ``record.extra``."""
        nearest = None
        try:
            with self._novelty_lock:
                near = [n for n in self.lab.novelty.nearest(record.motivation, 2) if n[0] != record.id]
            nearest = near[0] if near else None
        except Exception:
            nearest = None
        history = [r for r in self._history() if r.id != record.id]
        try:
            if isinstance(self.judge_agent, LLMJudge):
                return self.judge_agent.judge(record, parent, baseline, nearest, _param_budget(self.scale),
                                              recorder, baselines=self.baselines(), history=history)
            if isinstance(self.judge_agent, BuiltinJudge) and recorder is not None:
                recorder.step("judge", "builtin", "builtin")
            return self.judge_agent.judge(record, parent, baseline, nearest, _param_budget(self.scale),
                                          recorder, history=history)
        except Exception as exc:  # malformed twice: s_judge stays unmeasured (0.5, marked)
            if st is not None:
                st.fail(str(exc))
            record.extra["judge_failure"] = str(exc)
            return None

    def _propose(self, ctx: ResearchContext) -> tuple[Proposal, str]:
        if self.researcher is None:
            fb = self.fallback_researcher
            if fb is None:
                raise ResearchError("no researcher: the built-in researcher is not installed and no LLM is set")
            ctx.recorder.step("researcher", "builtin", getattr(fb, "spec", "fallback"))
            return fb.propose(ctx), getattr(fb, "spec", "fallback")
        if not isinstance(self.researcher, LLMResearcher):
            ctx.recorder.step("researcher", "builtin", getattr(self.researcher, "spec", "builtin"))
            return self.researcher.propose(ctx), self.researcher.spec
        try:
            return self.researcher.propose(ctx), self.researcher.spec
        except LLMError as exc:
            # unreachable, unusable after its correction round, or its circuit open: the
            # built-in researcher answers this step (the model's attempt stays in the transcript)
            fb = builtin_researcher(seed=self.seed)
            fallback(ctx.recorder, "researcher", self.researcher.spec, exc,
                     f"{getattr(fb, 'spec', 'builtin')} researcher")
            return fb.propose(ctx), getattr(fb, "spec", "builtin")

    def _measured(self, rec: Any) -> Any:
        """An unmeasured seed stands for its measured copy (committed by ensure_seed_measured)."""
        if rec.metrics:
            return rec
        for other in self.lab.store.all():
            if other.extra.get("measures") == rec.id and other.metrics:
                return other
        return rec

    def _apply_extra(self, record: Any, extra: dict[str, Any]) -> None:
        extra = dict(extra or {})
        if "genome" in extra:
            record.genome = extra.pop("genome")
        if "operators" in extra:
            record.operators = list(extra.pop("operators") or [])
        if "cognition" in extra:
            # what the researcher says it drew on; everything retrieved for it stays in extra
            cited = [str(c) for c in (extra.pop("cognition") or [])]
            record.extra["retrieved"] = list(record.cognition)
            record.cognition = list(dict.fromkeys(cited))
        record.extra.update(extra)

    def _cognition_for(self, parent: Any) -> list[tuple[Any, float]]:
        cb = self.cognition_base()
        query = (parent.problem or "").strip() or (parent.analysis or "").strip()[:2000]
        if cb is None or not query:
            return []
        try:
            return list(cb.search(query, k=3))
        except Exception as exc:
            self.emit(Warning(message=f"cognition search failed: {exc}", source="loop"))
            return []

    def _history(self) -> list[Any]:
        return list(self.lab.store.all())

    def _novelty(self, proposal: Proposal) -> tuple[bool, tuple[str, float] | None]:
        """docs/ARCHITECTURE.md step 3. A proposal that carries a genome (the built-in researcher's) is a
        structured design: it is a rehash exactly when an earlier experiment has the same genome.
        Its motivation is written from a template, so embedding similarity between two different
        genomes' motivations runs at 0.7-0.96 and would reject genuinely new designs. Free-text
        proposals (LLM researchers) are judged by motivation similarity against the threshold.
        Proposals in flight (not in the archive yet; ``concurrency`` > 1) count as earlier ones."""
        genome = (proposal.extra or {}).get("genome")
        in_flight = list(self._proposals.items())
        if genome:
            for rec in self.lab.store.all():
                if rec.genome == genome:
                    return False, (rec.id, 1.0)
            for other, p in in_flight:
                if (p.extra or {}).get("genome") == genome:
                    return False, (other, 1.0)
            return True, None
        with self._novelty_lock:
            novel, near = self.lab.novelty.check(proposal.motivation)
            others = [(i, p.motivation) for i, p in in_flight if p.motivation]
            if not novel or not others:
                return novel, near
            nov = self.lab.novelty
            vecs = nov.embedder.embed([proposal.motivation] + [m for _, m in others])
        sims = [float(vecs[0] @ v) for v in vecs[1:]]
        k = max(range(len(sims)), key=sims.__getitem__)
        if sims[k] >= nov.threshold:
            return False, (others[k][0], sims[k])
        return novel, near

    def _neighbour(self, exp_id: str) -> Any:
        """The experiment a proposal was too close to: an archived record, or a proposal in
        flight (both have ``name`` and ``motivation``)."""
        p = self._proposals.get(exp_id)
        if exp_id not in self.lab.store and p is not None:
            return p
        return self.lab.store.get(exp_id)

    def _recent_failures(self, n: int = 3) -> list[Any]:
        fails = [r for r in self.lab.store.all() if r.status in ("failed", "too_slow", "stopped_early")]
        return fails[-n:]

    def _finish(self, record: Any, status: str, reason: str, run_dir: Path, t_exp: float) -> Any:
        record.status = status
        if record.metrics and not record.reproduce:
            record.reproduce = self._reproduce_info(record)
        if reason:
            record.extra["failure"] = reason
        if not record.analysis and reason:
            record.analysis = f"## Outcome\n{status}: {reason}\n"
        t0 = time.perf_counter()
        self.emit(StageChanged(exp_id=record.id, stage="commit", status="started"))
        record.timings["total"] = round(time.perf_counter() - t_exp, 4)
        sha = self._commit(record)
        self.emit(StageChanged(exp_id=record.id, stage="commit", status="finished",
                               duration_s=time.perf_counter() - t0))
        (run_dir / "state.json").unlink(missing_ok=True)
        self.emit(ExperimentFinished(exp_id=record.id, name=record.name, status=status, fitness=record.fitness,
                                     fitness_components=record.fitness_components,
                                     metrics=_summary(record.metrics), sha=sha,
                                     duration_s=time.perf_counter() - t_exp, reason=reason,
                                     promotion=str((record.promotion or {}).get("outcome") or "")))
        return record


class _Stage:
    """Context manager: StageChanged events and the stage's wall time into ``timings``."""

    def __init__(self, loop: Loop, exp_id: str, name: str, timings: dict[str, float]) -> None:
        self.loop, self.exp_id, self.name, self.timings = loop, exp_id, name, timings
        self.failed: str | None = None

    def fail(self, detail: str) -> None:
        self.failed = detail

    def __enter__(self) -> "_Stage":
        self.t0 = time.perf_counter()
        self.loop.emit(StageChanged(exp_id=self.exp_id, stage=self.name, status="started"))
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        dt = time.perf_counter() - self.t0
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + dt, 4)
        status = "failed" if (et is not None or self.failed) else "finished"
        detail = self.failed or ("" if ev is None else f"{type(ev).__name__}: {ev}")
        self.loop.emit(StageChanged(exp_id=self.exp_id, stage=self.name, status=status, detail=detail[:500],
                                    duration_s=dt))


class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def _utc() -> str:
    from archive.record import utc_now

    return utc_now()


def _summary(metrics: dict[str, Any] | None) -> dict[str, Any]:
    m = metrics or {}
    return {k: m.get(k) for k in ("status", "val_loss", "val_bpb", "probe_mean", "probe_mean_partial", "partial",
                                  "tokens_per_s", "mixer_params", "cpu_seconds", "throughput_vs_seed")
            if k in m}


def _param_budget(scale: Any) -> int | None:
    try:
        from training.scales import get_scale

        return int(get_scale(scale).mixer_param_budget)
    except Exception:
        return None


def _versions() -> dict[str, str]:
    import platform

    out = {"python": platform.python_version()}
    try:
        import torch

        out["torch"] = torch.__version__
    except Exception:
        pass
    try:
        from importlib.metadata import version

        out["asiarch"] = version("asiarch")
    except Exception:
        pass
    return out
