"""The control plane of the loop: a command queue read between stages (``pause``, ``resume``,
``stop``, ``set_mode``, ``fork``, ``set_budget``), the approvals of supervised mode
(``approve``/``reject``/``edit`` answer :meth:`ControlMixin._await_approval`), and the budget.

The public methods are thread-safe: they only enqueue; the worker threads apply the commands
in :meth:`ControlMixin.poll` between stages. ``agents.loop.Loop`` mixes this in.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from agents.engineer import Decision
from agents.events import ApprovalRequested, LogLine, LoopStateChanged, StageChanged, Warning

__all__ = ["Command", "LoopStopped", "ControlMixin"]


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




class ControlMixin:
    """Commands, pause/stop, approvals and the budget of a ``Loop`` (uses its ``emit``,
    ``state``, ``mode``, ``done``, ``lab``, the budget fields and ``join``)."""

    def _init_control(self) -> None:
        """The command queues and the locks shared by the worker threads."""
        self.commands: "queue.Queue[Command]" = queue.Queue()
        self.state = "idle"
        self.done = 0
        self._fork: str | None = None
        self._stop_after_experiment = False
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._approvals: "queue.Queue[Command]" = queue.Queue()
        self._approval_lock = threading.Lock()
        self._paused = False
        self._stopping = False

    # ------------------------------------------------------------------ commands (any thread)
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

    # ------------------------------------------------------------------ applying them (workers)
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

    def budget_left(self) -> bool:
        """Whether another experiment may start."""
        if self._stop_after_experiment:
            return False
        if self.budget_experiments and self._started >= self.budget_experiments:
            return False
        if self.budget_hours and (time.monotonic() - self._t_start) >= self.budget_hours * 3600:
            return False
        return True
