"""The research loop: the ``Loop`` class coordinates one lab's experiments (docs/ARCHITECTURE.md,
"One experiment, step by step"). It is composed of:

- ``agents.experiment``: one experiment's stages, top to bottom (sample → research → novelty →
  check → approve → evaluate → seeds → analyse → judge → score → commit);
- ``agents.proposals``: what research draws on and the novelty check;
- ``agents.control``: the command queue (pause, resume, stop, mode, fork, budget) and approvals;
- ``agents.baselines``: the baselines and the seed (the yardstick), seed scheduling, scoring;
- ``agents.journal``: the crash journal (``runs/<id>/state.json``) an interrupted experiment is
  redone from;
- ``agents.roles``: the agents and the executor built from the lab's config;
- ``agents.loop_settings``: ``LoopSettings``, the lab's config with a command's overrides,
  resolved once.

This module keeps what ties them together: the constructor, the event bus, the scheduling of
experiments over worker threads, and the commits (made by the coordinating thread, the one
holding the lab lock).

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

import queue
import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from agents import journal, roles
from agents.baselines import BaselinesMixin
from agents.control import Command, ControlMixin, LoopStopped
from agents.engineer import Engineer, Executor
from agents.events import Event, EventBus, Warning
from agents.experiment import STAGES, ExperimentMixin
from agents.llm import LLMSpec
from agents.llm_session import LLMSession, tally
from agents.loop_settings import LoopSettings
from agents.proposals import ProposalsMixin
from agents.researcher import Proposal, Researcher
from agents.yardstick import baseline_key

__all__ = ["Loop", "LoopSettings", "LoopStopped", "Command", "LoopSummary", "baseline_key", "STAGES"]


@dataclass
class LoopSummary:
    """What a run of the loop did."""

    experiments: list[dict[str, Any]] = field(default_factory=list)
    state: str = "finished"
    seconds: float = 0.0
    #: per role: steps answered by the model / the built-in fallback, calls, time, tokens
    #: (``agents.llm_session.tally`` over this run's experiments)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)


class Loop(ControlMixin, BaselinesMixin, ProposalsMixin, ExperimentMixin):
    """The research loop over one lab.

    Args:
        lab: an open ``archive.lab.Lab``.
        settings: how the loop runs (``LoopSettings.from_config(lab.config, ...)``); without
            them, built from the lab's config and ``overrides``.
        researcher: use this researcher instead of the configured one.
        fallback_researcher: the researcher for a step whose LLM is unavailable when the
            built-in one is not installed (tests pass the stand-in here).
        executor: check/evaluate runner (default ``SandboxExecutor(scale)``).
        cognition: the cognition base (default: loaded from the corpus when first needed).
        overrides: keyword arguments of ``LoopSettings.from_config`` (``llm``, ``mode``,
            ``scale``, ``experiments``, ``hours``, ``concurrency``, ...; None: the config's
            value), when ``settings`` are not given.
    """

    def __init__(
        self,
        lab: Any,
        settings: LoopSettings | None = None,
        *,
        researcher: Researcher | None = None,
        fallback_researcher: Researcher | None = None,
        executor: Executor | None = None,
        cognition: Any = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and overrides:
            raise TypeError(f"pass either settings or overrides, not both ({', '.join(overrides)})")
        s = settings if settings is not None else LoopSettings.from_config(lab.config, **overrides)
        self.settings = s
        self.lab = lab
        self.path = Path(lab.path)
        # the running state starts from the settings (commands change mode and budget)
        self.mode = s.mode
        self.scale = s.scale
        self.budget_experiments = s.experiments
        self.budget_hours = s.hours
        self.seed = s.seed
        self.n_seeds, self.top_k_seeds, self.early_stop = s.seeds, s.top_k_seeds, s.early_stop
        self.debug_rounds, self.novelty_rounds = s.debug_rounds, s.novelty_rounds
        self.baseline_names = s.baselines
        self.rng = random.Random(self.seed)
        self.bus = EventBus(self.path / "events.jsonl")
        self._init_control()  # commands, state, the locks shared by worker threads
        self._thread: threading.Thread | None = None
        self._t_start = time.monotonic()
        self._cognition = cognition
        self._cognition_loaded = cognition is not None
        self._baselines: dict[str, dict[str, Any]] | None = None
        self._baselines_tried: set[str] = set()
        self.executor = executor or self._make_executor()
        self.summary = LoopSummary()
        self.concurrency = s.concurrency
        # shared between worker threads (concurrency > 1)
        self._started = 0
        self._reserved: set[str] = set()
        self._coordinator: int | None = None
        self._commit_q: "queue.Queue[tuple[Any, queue.Queue]]" = queue.Queue()
        self._novelty_lock = threading.Lock()  # hnswlib: no add while a query runs
        # sampling, research and novelty: one experiment at a time (the "driver" steps:
        # one researcher call at a time, each seeing the proposals already in flight)
        self._research_lock = threading.RLock()
        self._proposals: dict[str, Proposal] = {}  # proposals in flight (checked for novelty too)
        # agents per role
        self.role_specs = self._role_specs(s.llm)
        self.llm = LLMSession(self.role_specs, lab.config.llm, timeout_s=s.timeout_s, retries=s.retries,
                              backoff_s=s.backoff_s)
        self.researcher = researcher or self._make_researcher(self.role_specs["researcher"])
        self.fallback_researcher = fallback_researcher
        self.analyst = self._make_role("analyst")
        self.judge_agent = self._make_role("judge")
        self.engineer = Engineer(self.executor, self._make_role("debugger"), self.debug_rounds)

    # ------------------------------------------------------------------ configuration (agents.roles)
    def _ollama_host(self) -> str | None:
        """The lab's ``[llm] ollama_host``, unless it is the default and OLLAMA_HOST is set."""
        return roles.ollama_host(self.lab.config)

    def _role_specs(self, llm: str | None) -> dict[str, LLMSpec]:
        return roles.role_specs(self.lab.config, llm)

    def _make_executor(self) -> Executor:
        return roles.make_executor(self.lab.config, self.scale)

    def _make_researcher(self, spec: LLMSpec) -> Researcher:
        return roles.make_researcher(self.llm, self.seed)

    def _make_role(self, role: str) -> Any:
        return roles.make_role(self.llm, role)

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

    def emit(self, event: Event) -> None:
        """Publish an event."""
        self.bus.emit(event)

    # ------------------------------------------------------------------ the journal (agents.journal)
    def _runs(self) -> Path:
        return journal.runs_dir(self.path)

    def _save_state(self, run_dir: Path, state: dict[str, Any]) -> None:
        journal.save_state(run_dir, state)

    def in_flight(self) -> dict[str, Any] | None:
        """The saved state of an experiment that was started but never committed, if any."""
        return journal.in_flight(self._runs(), self.lab.store, self._reserved)

    # ------------------------------------------------------------------ commits
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

    # ------------------------------------------------------------------ scheduling
    def run(self) -> LoopSummary:
        """Run until the budget is spent or a stop command (blocking; ``start()`` runs it in a
        thread). Never raises for an experiment's failure; returns a summary."""
        t0 = time.monotonic()
        self._t_start = t0
        self._coordinator = threading.get_ident()
        lock = getattr(self.lab, "lock", None)
        ctx = lock(timeout=self.settings.lock_timeout) if callable(lock) else _NullCtx()
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

class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None

