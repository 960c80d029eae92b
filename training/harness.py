"""The harness's handle on its worker: fork, command, bounded replies, CPU and memory from /proc.

:class:`WorkerClient` forks the worker (:mod:`training.worker`) from the trusted harness before
any candidate code is loaded, and talks to it over a socketpair with :mod:`training.wire` frames.
Replies are bounded (header size, per-tensor and per-frame bytes); a reply that breaks the
protocol, or a worker that dies, raises :class:`WorkerFailed` with a one-line reason. The
worker's CPU seconds and peak memory are read by the harness from ``/proc/<pid>/stat`` and
``/proc/<pid>/status`` (the worker cannot report them falsely).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from typing import Any

import torch

from training import wire

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class WorkerFailed(Exception):
    """A command failed. ``kind``: ``"error"`` (the candidate raised), ``"memory"``,
    ``"violation"`` (the diagnostic guard refused something), ``"died"`` (the worker process is
    gone) or ``"protocol"`` (a malformed or oversized reply)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _signal_reason(status: int, limits: dict[str, Any]) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return f"exceeded {float(limits.get('cpu_s', 0)):g} s CPU time"
        if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
            return (f"the worker died from {signal.Signals(sig).name} (native code crashed, possibly at the "
                    f"{float(limits.get('address_space_gib', 0)):g} GiB address-space limit)")
        if sig == signal.SIGKILL:
            return "the worker was killed (SIGKILL; CPU hard limit or out of memory)"
        try:
            return f"the worker died from {signal.Signals(sig).name}"
        except ValueError:
            return f"the worker died from signal {sig}"
    return f"the worker exited with status {os.WEXITSTATUS(status)}"


class WorkerClient:
    """A forked worker and the channel to it. ``request`` is the sandbox request (limits,
    payload, run folder). Use as a context manager (the worker is killed on exit)."""

    def __init__(self, request: dict[str, Any], max_reply_mib: float = 256.0) -> None:
        self.request = request
        self.limits = dict(request.get("limits") or {})
        self.max_reply = int(max_reply_mib * 1024 * 1024)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the worker
            ours.close()
            from training.worker import serve

            serve(theirs, request)  # never returns
            os._exit(3)
        theirs.close()
        self.pid = pid
        self.sock = ours
        self.status: int | None = None
        self.calls = 0

    # ------------------------------------------------------------------ process facts
    def alive(self) -> bool:
        """True while the worker process exists (reaps it when it has ended)."""
        if self.status is not None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.status = 0
            return False
        if pid:
            self.status = status
            return False
        return True

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the worker, from /proc (0.0 once it is gone)."""
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            return 0.0

    def memory_mib(self) -> dict[str, float]:
        """VmPeak and VmHWM of the worker in MiB, from /proc."""
        out: dict[str, float] = {}
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith(("VmPeak:", "VmHWM:")):
                        out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
        except (OSError, ValueError, IndexError):
            pass
        return out

    def death_reason(self) -> str:
        """Why the worker is gone (waits briefly for it)."""
        if self.status is None:
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.status is None:
                self.kill()
        return _signal_reason(self.status or 0, self.limits)

    # ------------------------------------------------------------------ commands
    def call(self, op: str, args: dict[str, Any] | None = None, tensors: list[torch.Tensor] | tuple = (),
             n_out: int | None = None, on_progress: Any = None,
             max_progress: int = 100000, on_checkpoint: Any = None) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """Run ``op`` in the worker; returns ``(values, tensors)``. ``n_out``: the exact number of
        tensors the reply must carry. ``on_progress(fraction, message)`` gets the worker's
        ``progress`` frames before the reply (at most ``max_progress``; more is a protocol
        breach). ``on_checkpoint(header) -> dict`` answers the worker's one ``checkpoint``
        frame (the LM run's half-way checkpoint, ``training.early_stop``): while it runs the
        worker waits and answers nested calls (``logits`` of the ``lm_checkpoint`` model); its
        dict goes back as the ``resume`` command's arguments. A checkpoint frame without
        ``on_checkpoint``, or a second one, is a protocol breach. Raises :class:`WorkerFailed`."""
        if self.status is not None:
            raise WorkerFailed("died", self.death_reason())
        self.calls += 1
        try:
            wire.send(self.sock, {"op": op, "args": args or {}}, list(tensors))
            n_progress = n_checkpoints = 0
            while True:
                header, out = wire.recv(self.sock, max_header=256 * 1024, max_tensor_bytes=self.max_reply,
                                        max_total_bytes=self.max_reply)
                if header.get("event") == "checkpoint":
                    n_checkpoints += 1
                    if on_checkpoint is None or n_checkpoints > 1 or out:
                        raise wire.WireError("an unexpected checkpoint message")
                    answer = on_checkpoint(header)
                    wire.send(self.sock, {"op": "resume", "args": dict(answer or {})})
                    continue
                if header.get("event") != "progress":
                    break
                n_progress += 1
                if n_progress > max_progress or out:
                    raise wire.WireError(f"more than {max_progress} progress messages")
                if on_progress is not None:
                    f = header.get("fraction")
                    on_progress(float(f) if isinstance(f, (int, float)) and math.isfinite(f) else 0.0,
                                str(header.get("message", ""))[:200])
        except wire.WireError as exc:
            if "closed" in str(exc) or not self.alive():
                raise WorkerFailed("died", self.death_reason()) from None
            self.kill()
            raise WorkerFailed("protocol", f"the worker broke the protocol: {exc}") from None
        except OSError:
            raise WorkerFailed("died", self.death_reason()) from None
        if header.get("ok") is not True:
            kind = header.get("kind") if header.get("kind") in ("error", "memory", "violation") else "error"
            raise WorkerFailed(kind, str(header.get("error") or "the worker failed")[:400])
        values = header.get("values")
        if not isinstance(values, dict):
            values = {}
        if n_out is not None and len(out) != n_out:
            self.kill()
            raise WorkerFailed("protocol", f"the worker returned {len(out)} tensors instead of {n_out}")
        return values, out

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                _, self.status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                self.status = 0

    def close(self) -> None:
        """Ask the worker to quit, then kill it regardless."""
        if self.status is None:
            try:
                self.sock.settimeout(2.0)
                wire.send(self.sock, {"op": "quit"})
                deadline = time.monotonic() + 3.0  # let it flush its output
                while self.alive() and time.monotonic() < deadline:
                    time.sleep(0.01)
            except (OSError, wire.WireError):
                pass
        self.kill()
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "WorkerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
