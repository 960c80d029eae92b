"""Executors: where checks and evaluations run (docs/ARCHITECTURE.md, "Executors").

Two implementations of ``agents.engineer.Executor``:

- ``local`` (default): ``agents.engineer.SandboxExecutor``, a sandboxed child process on this
  machine.
- ``ray``: :class:`RayExecutor`, each check or evaluation a Ray task on a cluster. The loop and the
  archive stay on the driver; the task carries the mixer's *source* (not a path, the worker may be
  another machine), runs the very same ``SandboxExecutor`` inside the worker (so the sandbox and
  its limits still apply: the candidate code runs in a child process of the Ray worker, never in
  the worker itself), and sends back the ``StepResult`` with the captured log lines. While the
  task runs, its log lines stream to the driver through a small Ray actor (``_LogSink``, no CPU)
  and reach ``on_line`` as they come (about every half second); the driver also writes the log
  into the run folder.

A task lost to a dead worker (or node) is resubmitted once; a second loss is recorded as a failed
evaluation whose metrics say ``status = "stopped"`` with the reason, so the Engineer does not send a
lost machine to the Debugger as if it were a bug, and the loop continues. A Ray worker killed
mid-task would orphan its sandbox child (which runs in its own session); each task therefore starts
a small watchdog process that kills the sandbox children's process groups when the worker dies.

Ray is an optional extra: ``pip install "asiarch[cluster]"``. :func:`make_executor` builds the
executor a lab's ``[executor]`` config names.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agents.engineer import SandboxExecutor, StepResult, scale_spec

__all__ = ["RayExecutor", "RayUnavailable", "make_executor", "ray_available", "LOST_ERRORS"]

LineFn = Callable[[str], None]

#: Names of the Ray exceptions that mean "the machine running the task went away", retried once.
LOST_ERRORS = ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError",
               "OwnerDiedError", "ObjectReconstructionFailedError", "RaySystemError")

#: How many log lines a task sends back (the full log stays capped by the sandbox anyway).
MAX_LINES = 20000


class RayUnavailable(ValueError):
    """Ray is not installed or the cluster cannot be reached; the message says what to do (a
    ValueError: the lab's ``[executor]`` configuration cannot be used as it is)."""


def ray_available() -> bool:
    """Whether the ``ray`` package can be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            'the "ray" executor needs Ray, which is not installed. Install the cluster extra with '
            '`pip install "asiarch[cluster]"` (or `pip install "ray[default]"`), or set the '
            'executor\'s kind = "local" in the lab\'s asiarch.toml.') from None
    return ray


# ---------------------------------------------------------------------------------- worker side

_WATCHDOG = r"""
import os, signal, sys, time
import psutil
me = os.getpid()
seen = {}
try:
    worker = psutil.Process(int(sys.argv[1]))
    while worker.status() != psutil.STATUS_ZOMBIE:
        for child in worker.children():
            if child.pid != me:
                try:
                    seen[child.pid] = os.getpgid(child.pid)
                except ProcessLookupError:
                    pass
        time.sleep(0.25)
except psutil.NoSuchProcess:
    pass
for pid, pgid in seen.items():
    try:
        if pgid == pid:  # a group leader (the sandbox child's own session): the whole group
            os.killpg(pgid, signal.SIGKILL)
        else:  # never the worker's group (it may hold Ray's own processes): the process alone
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
"""


def _start_watchdog() -> subprocess.Popen | None:
    """A process that kills this worker's sandbox children (their process groups) if the worker
    dies (psutil lists the children); None where it cannot be started."""
    try:
        return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError:
        return None


class _LogSink:
    """A Ray actor holding log lines on their way from tasks to the driver (``put`` from tasks,
    ``take`` by the driver; calls from one caller run in order)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, list[str]]] = []

    def put(self, key: str, lines: list[str]) -> None:
        """Queue ``lines`` of the task ``key``."""
        self.items.append((key, lines))

    def take(self) -> list[tuple[str, list[str]]]:
        """Everything queued so far (and forget it)."""
        out, self.items = self.items, []
        return out


def run_step(kind: str, code: str, scale: Any, limits: dict[str, Any] | None, seed: int = 0,
             baseline: dict[str, Any] | None = None, scratch_root: str | None = None,
             sink: Any = None, key: str = "", trusted: bool = False,
             unsafe_no_sandbox: bool = False, early_stop: float | None = None) -> dict[str, Any]:
    """Run one check or evaluation of ``code`` in the sandbox on this machine (the body of a Ray
    task; callable directly too). ``sink``: a ``_LogSink`` actor handle to stream log lines to
    (as ``key``); ``trusted``: the project's own code (may run without bwrap on that node); ``unsafe_no_sandbox``: run untrusted code
    without bwrap where that node has none (``[executor] unsafe_no_sandbox``); ``early_stop``: as
    ``SandboxExecutor.evaluate``'s. Returns ``{"step": StepResult as dict, "lines": [...] (the last MAX_LINES),
    "n_lines", "streamed", "node", "pid", "started", "ended"}``; never raises for a failing
    candidate."""
    from training.sandbox import Limits

    started = time.time()
    root = scratch_root if scratch_root and Path(scratch_root).is_dir() else None
    scratch = Path(tempfile.mkdtemp(prefix="asiarch-ray-", dir=root))
    lines: list[str] = []
    pending: list[str] = []
    counts = {"total": 0, "streamed": 0}
    lock = threading.Lock()
    done = threading.Event()

    def on_line(line: str) -> None:
        with lock:
            lines.append(line)
            counts["total"] += 1
            if len(lines) > MAX_LINES:
                del lines[: len(lines) - MAX_LINES]
            if sink is not None:
                pending.append(line)

    def flush(wait: bool = False) -> None:
        nonlocal sink
        with lock:
            batch = pending[:]
            pending.clear()
        if not batch or sink is None:
            return
        try:
            ref = sink.put.remote(key, batch)
            if wait:
                import ray

                ray.get(ref, timeout=30)
            counts["streamed"] += len(batch)
        except Exception:  # the sink is gone: the lines still come back with the result
            sink = None

    def flusher() -> None:
        while not done.wait(0.5):
            flush()

    streamer = threading.Thread(target=flusher, daemon=True) if sink is not None else None
    if streamer is not None:
        streamer.start()
    watchdog = _start_watchdog()
    try:
        path = scratch / "mixer.py"
        path.write_text(code, encoding="utf-8")
        lim = Limits.from_dict(limits) if limits else None
        ex = SandboxExecutor(scale, lim, unsafe_no_sandbox=unsafe_no_sandbox)
        try:
            if kind == "check":
                res = ex.check(path, scratch / "check", on_line=on_line, trusted=trusted)
            else:
                res = ex.evaluate(path, scratch / "eval", seed, baseline, on_line=on_line, trusted=trusted,
                                  early_stop=early_stop)
        except Exception as exc:  # the sandbox could not start here: a failed step, with the reason
            res = StepResult(False, [], None, f"{type(exc).__name__} on the Ray worker: {exc}", "", 0.0)
    finally:
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        shutil.rmtree(scratch, ignore_errors=True)
        done.set()
        if streamer is not None:
            streamer.join(timeout=5)
        flush(wait=True)
    node = ""
    try:
        import ray

        if ray.is_initialized():
            node = ray.util.get_node_ip_address()
    except Exception:
        node = ""
    with lock:
        out_lines = list(lines)
    return {"step": dataclasses.asdict(res), "lines": out_lines, "n_lines": counts["total"],
            "streamed": counts["streamed"], "node": node, "pid": os.getpid(), "started": started,
            "ended": time.time()}


# ---------------------------------------------------------------------------------- driver side

class RayExecutor:
    """Checks and evaluations as Ray tasks (implements ``agents.engineer.Executor``).

    Args:
        scale: scale name or ``training.scales.Scale`` (sent to the worker as a dict).
        limits: ``training.sandbox.Limits`` for the sandbox inside each task (default: the
            sandbox's defaults with ``threads`` = the CPUs requested per task).
        address: the Ray cluster: ``"auto"`` (a running cluster found the usual way), a
            ``ray://host:port`` or ``host:port`` address, or ``"local"`` (start a Ray instance on
            this machine). Ignored when Ray is already initialised in this process.
        num_cpus / num_gpus: resources requested per task.
        retries: how many times a task lost to a dead worker is resubmitted (default 1).
        timeout_s: give up on a task after this long (None: wait; the sandbox's wall-time limit
            bounds the run itself, not the time queued for resources).
        scratch_root: folder for the task's scratch on the worker (default: the worker's temp
            folder).
        init_kwargs: extra arguments for ``ray.init`` when this executor starts Ray.
        stream_logs: stream each task's log lines to ``on_line`` while it runs (through a
            zero-CPU actor); otherwise they are all delivered when the task ends.

    Thread-safe: the loop may call ``evaluate`` from several threads at once (N evaluations in
    flight), each blocking until its task ends.
    """

    kind = "ray"

    def __init__(self, scale: Any = "probe", limits: Any = None, address: str = "auto", num_cpus: float = 1.0,
                 num_gpus: float = 0.0, retries: int = 1, timeout_s: float | None = None,
                 scratch_root: str | os.PathLike[str] | None = None,
                 init_kwargs: dict[str, Any] | None = None, stream_logs: bool = True,
                 unsafe_no_sandbox: bool = False) -> None:
        self.scale = scale
        self.limits = limits
        self.unsafe_no_sandbox = bool(unsafe_no_sandbox)
        self.address = address
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.retries = int(retries)
        self.timeout_s = timeout_s
        self.scratch_root = str(scratch_root) if scratch_root is not None else None
        self.init_kwargs = dict(init_kwargs or {})
        self._ray: Any = None
        self._remote: Any = None
        self._started_ray = False
        self._init_lock = threading.Lock()
        self.stream_logs = stream_logs
        self._sink: Any = None
        self._listeners: dict[str, tuple[LineFn, list[int]]] = {}  # key -> (on_line, [lines delivered])
        self._drain_lock = threading.Lock()
        self._drainer: threading.Thread | None = None
        self._closed = threading.Event()

    # -- connection ----------------------------------------------------------------------
    def connect(self) -> Any:
        """Import Ray and connect (or start it, for ``address="local"``) once; returns the ray
        module. Raises :class:`RayUnavailable` with a clear message."""
        with self._init_lock:
            if self._remote is not None:
                return self._ray
            ray = _import_ray()
            if not ray.is_initialized():
                kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
                kw.update(self.init_kwargs)
                if self.address and self.address != "local":
                    kw["address"] = self.address
                try:
                    ray.init(**kw)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise RayUnavailable(
                        f"cannot connect to the Ray cluster at {self.address!r}: {str(exc).rstrip('. ')}. "
                        "Start one with `ray start --head`, set the executor's ray_address in asiarch.toml "
                        'to its address, use ray_address = "local" to start Ray on this machine, or set '
                        'the executor\'s kind = "local".') from None
                self._started_ray = True
            self._ray = ray
            self._remote = ray.remote(run_step).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                        max_retries=0)
            self._closed.clear()
            if self.stream_logs:
                try:
                    self._sink = ray.remote(_LogSink).options(num_cpus=0, max_restarts=1).remote()
                except Exception:  # streaming is a convenience: lines then come with the result
                    self._sink = None
            return ray

    def close(self) -> None:
        """Stop streaming logs; shut Ray down if this executor started it."""
        self._closed.set()
        if self._drainer is not None:
            self._drainer.join(timeout=5)
            self._drainer = None
        if self._sink is not None and self._ray is not None and self._ray.is_initialized():
            try:
                self._ray.kill(self._sink)
            except Exception:
                pass
        self._sink = None
        if self._started_ray and self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        self._started_ray = False
        self._remote = None

    # -- log streaming -------------------------------------------------------------------
    def _drain(self) -> None:
        """Deliver every line the sink holds to its task's ``on_line``."""
        with self._drain_lock:
            sink = self._sink
            if sink is None:
                return
            try:
                items = self._ray.get(sink.take.remote(), timeout=30)
            except Exception:  # the sink died: the lines come back with each result
                self._sink = None
                return
            for key, lines in items:
                entry = self._listeners.get(key)
                if entry is None:
                    continue
                fn, count = entry
                count[0] += len(lines)
                for line in lines:
                    try:
                        fn(line)
                    except Exception:
                        pass

    def _drain_forever(self) -> None:
        while not self._closed.wait(0.3):
            if self._listeners:
                self._drain()

    def _listen(self, key: str, fn: LineFn) -> list[int]:
        count = [0]
        with self._drain_lock:
            self._listeners[key] = (fn, count)
            if self._drainer is None or not self._drainer.is_alive():
                self._drainer = threading.Thread(target=self._drain_forever, daemon=True,
                                                 name="asiarch-ray-logs")
                self._drainer.start()
        return count

    # -- the Executor protocol -----------------------------------------------------------
    def check(self, path: Path, run_dir: Path, on_line: LineFn | None = None, trusted: bool = False) -> StepResult:
        """Static and dynamic checks of the file at ``path``, in the sandbox of a Ray task."""
        return self._run("check", Path(path), Path(run_dir), 0, None, on_line, trusted)

    def evaluate(self, path: Path, run_dir: Path, seed: int, baseline: dict[str, Any] | None,
                 on_line: LineFn | None = None, trusted: bool = False,
                 early_stop: float | None = None) -> StepResult:
        """The evaluation ladder at the executor's scale, in the sandbox of a Ray task
        (``early_stop``: see ``agents.engineer.Executor``)."""
        return self._run("evaluate", Path(path), Path(run_dir), seed, baseline, on_line, trusted, early_stop)

    # -- internals -----------------------------------------------------------------------
    def _default_limits(self) -> dict[str, Any] | None:
        """The sandbox's default limits, with as many threads as CPUs requested per task."""
        if self.num_cpus <= 1:
            return None
        from training.sandbox import Limits

        return dataclasses.replace(Limits(), threads=max(1, int(self.num_cpus))).to_dict()

    def _run(self, kind: str, path: Path, run_dir: Path, seed: int, baseline: dict[str, Any] | None,
             on_line: LineFn | None, trusted: bool = False, early_stop: float | None = None) -> StepResult:
        t0 = time.perf_counter()
        ray = self.connect()
        run_dir.mkdir(parents=True, exist_ok=True)
        say = on_line or (lambda line: None)
        try:
            code = path.read_text(encoding="utf-8")
        except OSError as exc:
            return StepResult(False, [], None, f"cannot read {path}: {exc}", "", time.perf_counter() - t0)
        limits = self.limits.to_dict() if self.limits is not None else self._default_limits()
        spec = scale_spec(self.scale, as_dict=True)
        attempts: list[dict[str, Any]] = []
        out: dict[str, Any] | None = None
        lost = ""
        delivered = [0]
        base_key = f"{os.getpid()}-{id(self)}-{time.monotonic_ns()}-{threading.get_ident()}"
        for attempt in range(1, self.retries + 2):
            key = f"{base_key}-{attempt}"
            delivered = self._listen(key, say) if self._sink is not None else [0]
            ref = self._remote.remote(kind, code, spec, limits, seed, baseline, self.scratch_root,
                                      self._sink, key, trusted, self.unsafe_no_sandbox, early_stop)
            try:
                out = ray.get(ref, timeout=self.timeout_s)
                self._drain()  # the task's last lines are in the sink by now
                attempts.append({"attempt": attempt, "outcome": "ran", "node": out.get("node"),
                                 "pid": out.get("pid")})
                break
            except Exception as exc:  # noqa: BLE001 - sorted below
                name = type(exc).__name__
                if name == "GetTimeoutError":
                    ray.cancel(ref, force=True)
                    lost = f"the Ray task did not finish within {self.timeout_s:g} s"
                    attempts.append({"attempt": attempt, "outcome": "timeout"})
                    break
                if not _is_lost(exc):
                    lost = f"the Ray task failed: {name}: {_first_line(exc)}"
                    if "ModuleNotFoundError" in str(exc) or "No module named" in str(exc):
                        lost += " (is asiarch installed, at the same path, on every node of the cluster?)"
                    attempts.append({"attempt": attempt, "outcome": "error", "error": lost})
                    break
                lost = f"{name}: {_first_line(exc)}"
                attempts.append({"attempt": attempt, "outcome": "lost", "error": lost})
                if attempt <= self.retries:
                    say(f"[ray] {kind} task lost ({name}); retrying ({attempt}/{self.retries})")
        with self._drain_lock:
            for attempt in range(1, self.retries + 2):
                self._listeners.pop(f"{base_key}-{attempt}", None)
        seconds = time.perf_counter() - t0
        info = {"kind": "ray", "attempts": attempts, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if out is None:
            n = len(attempts)
            error = (f"{kind} lost: the Ray worker running it died {n} time{'s' if n > 1 else ''} "
                     f"({lost}); recorded as failed" if attempts and attempts[-1]["outcome"] == "lost" else lost)
            _write_log(run_dir / f"{kind}.log", [f"[ray] {error}"])
            say(f"[ray] {error}")
            metrics = None
            if kind == "evaluate":
                # "stopped", not "error": a lost machine is not a bug for the Debugger to fix
                metrics = {"status": "stopped", "stop_reason": error, "error": error, "executor": info}
            return StepResult(False, [], metrics, error, f"[ray] {error}", seconds)
        step = out["step"]
        lines = list(out.get("lines") or [])
        _write_log(run_dir / f"{kind}.log", lines)
        # the lines not streamed (no sink, or it failed): delivered now, in order
        first = int(out.get("n_lines", len(lines))) - len(lines)
        for i, line in enumerate(lines):
            if first + i < delivered[0]:
                continue
            try:
                say(line)
            except Exception:
                pass
        info.update({"node": out.get("node"), "pid": out.get("pid"), "started": out.get("started"),
                     "ended": out.get("ended"), "lines": out.get("n_lines"), "streamed": delivered[0]})
        metrics = step.get("metrics")
        if isinstance(metrics, dict):
            metrics = {**metrics, "executor": info}
        res = StepResult(bool(step.get("ok")), list(step.get("checks") or []), metrics, str(step.get("error") or ""),
                         str(step.get("log_tail") or ""), seconds)
        (run_dir / "ray_task.json").write_text(_json(info), encoding="utf-8")
        return res


def _is_lost(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & set(LOST_ERRORS))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _write_log(path: Path, lines: list[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    except OSError:
        pass


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=1, default=str)


def make_executor(config: Any, scale: Any, limits: Any = None, connect: bool = False, **overrides: Any) -> Any:
    """The executor a lab's ``[executor]`` section names (``archive.config.ExecutorConfig``):
    ``SandboxExecutor`` for ``kind = "local"``, :class:`RayExecutor` for ``"ray"`` (address and
    per-task resources from the config; ``overrides`` replace them). Ray is connected lazily, on
    the first task unless ``connect`` (then here, so that a wrong address fails before the loop
    starts); a missing Ray package raises :class:`RayUnavailable` here."""
    kind = getattr(config, "kind", "local")
    unsafe = bool(getattr(config, "unsafe_no_sandbox", False))
    if kind == "local":
        return SandboxExecutor(scale, limits, unsafe_no_sandbox=unsafe)
    if kind == "ray":
        _import_ray()
        kw: dict[str, Any] = {"address": getattr(config, "ray_address", "auto"),
                              "num_cpus": getattr(config, "cpus_per_task", 1.0),
                              "num_gpus": getattr(config, "gpus_per_task", 0.0), "unsafe_no_sandbox": unsafe}
        kw.update(overrides)
        ex = RayExecutor(scale, limits, **kw)
        if connect:
            ex.connect()
        return ex
    raise ValueError(f"unknown executor kind {kind!r} (known: local, ray)")
