"""Run untrusted mixer code in a child process, with limits, and get JSON back.

Candidate code never runs in the parent. :func:`run_sandboxed` spawns a fresh interpreter
(``python -m training.sandbox_child``; fork+exec, never a fork of the caller's interpreter) that

- sets ``resource`` limits on itself before anything else: CPU seconds, address space, written
  file size, no core files;
- runs in the run folder as working directory, with a scrubbed environment (PATH, HOME and TMPDIR
  pointing at the run folder, PYTHONPATH to this project, thread counts), in its own session
  (process group) so the parent can kill everything;
- has no network: where the kernel allows it (``unshare`` as root, or with a user namespace) the
  child gets a fresh network namespace (only a down loopback) and a mount namespace in which the
  whole filesystem is read-only except the run folder; otherwise the in-process guard refuses
  socket creation. The in-process guard (restricted builtins for the candidate module, an audit
  hook refusing sockets, subprocesses, writes outside the run folder and reads outside the
  project and the Python installation, a monkeypatch watch) is installed in every mode;
- streams its stdout/stderr line by line to ``run_dir/<task>.log`` and to ``on_line``;
- sends results as JSON lines over a dedicated pipe (``{"event": ...}`` messages, the last one
  ``{"event": "result", ...}``).

A child that dies comes back as ``SandboxResult(ok=False, reason=...)`` with a clear reason
("killed after 60 s wall time", "exceeded 180 s CPU time", "exceeded 4 GiB address space"),
never as a hang: the parent enforces the wall time itself and kills the process group.

Tasks: ``"check"`` (payload ``{"path", "scale": {...}}``; see :mod:`training.checker`) and
``"evaluate"`` (payload ``{"path", "scale", "seed", "baseline", "guards"}``; calls
``training.evaluate.evaluate_file`` inside the child, streaming its log lines).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

#: The project root (the folder holding the ``training`` package).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TASKS = ("check", "evaluate")
GIB = 1024 ** 3

# Shell run inside the new mount namespace before exec'ing the child: keep mounts private, make
# the root filesystem (and /dev/shm) read-only, and the run folder writable.
_MOUNT_SCRIPT = (
    'set -e; rd="$1"; shift; '
    "mount --make-rprivate /; mount --rbind / /; mount -o remount,bind,ro /; "
    "(mount --bind /dev/shm /dev/shm && mount -o remount,bind,ro /dev/shm) 2>/dev/null || true; "
    'mount --bind "$rd" "$rd"; mount -o remount,bind,rw "$rd"; exec "$@"'
)


@dataclass
class Limits:
    """Resource limits of one sandboxed run.

    ``network``: ``"auto"`` (namespaces where the kernel allows it, else the in-process guard),
    ``"namespace"`` (require namespaces; fail if unavailable) or ``"guard"`` (in-process guard
    only). ``threads``: torch/OpenMP threads in the child."""

    cpu_s: float = 240.0
    wall_s: float = 150.0
    address_space_gib: float = 4.0
    file_size_mib: float = 64.0
    threads: int = 1
    network: str = "auto"
    max_log_mib: float = 16.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (sent to the child)."""
        return asdict(self)

    @classmethod
    def for_evaluation(cls, scale: Any = "explore", threads: int = 1, guards: Any = None,
                       **overrides: Any) -> "Limits":
        """Limits for the ``evaluate`` task at ``scale`` (a name, Scale or scale dict) under
        ``guards`` (a ``training.guards.Guards`` or its dict; None: derived from the scale's
        ``expected_seconds`` with the default factors, as before the seed is measured).

        The evaluation itself ends a run that trips a guard (status ``too_slow``/``hung``, with
        its partial metrics); these kernel-enforced limits are the backstop above them: wall time
        = the hang guard + 60 s (interpreter start-up, torch import), CPU time = 1.25 x the
        efficiency cap + 60 s (or, without a cap, the wall limit x ``threads``), 8 GiB of address
        space. Wall time is not a budget. One thread by default: CPU seconds then stay comparable
        however busy the machine is (oversubscribed intra-op threads spin and burn CPU time), and
        on a shared CPU one thread is faster than contended ones. ``overrides`` replace fields."""
        from training.guards import Guards

        if guards is None:
            if isinstance(scale, dict):
                expected = float(scale.get("expected_seconds") or 120.0)
                name = scale.get("name")
            else:
                from training.scales import get_scale

                s = get_scale(scale)
                expected, name = s.expected_seconds, s.name
            g = Guards.relative_to(None, expected_s=expected, scale_name=name)
        else:
            g = guards if isinstance(guards, Guards) else Guards.from_dict(guards)
        hang = g.wall_limit_s if g.wall_limit_s is not None else 24 * 3600.0
        wall = hang + 60.0
        cpu = 1.25 * g.cpu_limit_s + 60.0 if g.cpu_limit_s is not None else wall * max(1, threads) + 30.0
        fields: dict[str, Any] = dict(wall_s=wall, cpu_s=cpu, address_space_gib=8.0,
                                      threads=threads, file_size_mib=256.0)
        fields.update(overrides)
        return cls(**fields)


@dataclass
class SandboxResult:
    """What came back from the child.

    ``ok``: the task ran to completion and reported success; ``result``: the child's final JSON
    (None when it died first); ``reason``: one line saying why not ok; ``log_path``: the full
    captured stdout/stderr; ``events``: the intermediate JSON messages (e.g. finished checks);
    ``isolation``: which walls were up (``"namespace"`` = network+mount namespaces, or
    ``"guard"``); ``duration_s``; ``returncode`` of the child (negative: killed by that signal)."""

    ok: bool
    result: dict | None
    reason: str | None
    log_path: Path
    events: list[dict] = field(default_factory=list)
    isolation: str = "guard"
    duration_s: float = 0.0
    returncode: int | None = None


class SandboxError(RuntimeError):
    """The sandbox could not be started at all (bad task, missing file, isolation unavailable)."""


def _probe(cmd: list[str]) -> bool:
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=20, env={"PATH": "/usr/bin:/bin"})
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=1)
def namespace_prefix() -> tuple[str, ...] | None:
    """The ``unshare`` command prefix that gives a child fresh network and mount namespaces, or
    None where the kernel (or missing privileges) does not allow it. Probed once and cached."""
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    sh = shutil.which("sh", path="/usr/bin:/bin")
    if not unshare or not sh or not sys.platform.startswith("linux"):
        return None
    candidates = [(unshare, "--net", "--mount")]
    if os.geteuid() != 0:
        candidates.append((unshare, "--user", "--map-root-user", "--net", "--mount"))
    import tempfile

    probe_dir = tempfile.mkdtemp(prefix="asiarch-nsprobe-")
    try:
        return _probe_prefixes(candidates, sh, probe_dir)
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def _probe_prefixes(candidates: list[tuple[str, ...]], sh: str, probe_dir: str) -> tuple[str, ...] | None:
    for prefix in candidates:
        # the same mount script the real run uses, on a harmless folder, then a check that the
        # loopback is down (a fresh namespace) - all inside the namespace
        cmd = [*prefix, "--", sh, "-c", _MOUNT_SCRIPT, "sandbox-probe", probe_dir, sh, "-c",
               "test ! -w /etc || exit 3; test -w \"$0\" || exit 4; exit 0", probe_dir]
        if _probe(cmd):
            return prefix
    return None


def isolation_mode(limits: Limits | None = None) -> str:
    """``"namespace"`` when the child will get network+mount namespaces, else ``"guard"``."""
    limits = limits or Limits()
    if limits.network == "guard":
        return "guard"
    if namespace_prefix() is not None:
        return "namespace"
    if limits.network == "namespace":
        raise SandboxError("network isolation was required (network='namespace') but this kernel does "
                           "not allow `unshare --net --mount` here; use network='auto' to fall back to the "
                           "in-process socket guard.")
    return "guard"


#: Device-assignment variables passed through to the child (everything else is scrubbed).
_DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def _scrubbed_env(run_dir: Path, limits: Limits) -> dict[str, str]:
    threads = str(max(1, int(limits.threads)))
    # The device assignment is not a secret and the child needs it: a GPU given to this process
    # (by Ray, Slurm or the user) must reach the evaluation.
    passthrough = {k: os.environ[k] for k in _DEVICE_VARS if k in os.environ}
    return {
        **passthrough,
        "PATH": "/usr/bin:/bin",
        "HOME": str(run_dir),
        "TMPDIR": str(run_dir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MALLOC_ARENA_MAX": "2",
        # steady allocation costs for the timing check: no switch between heap and mmap'd
        # blocks as tensors grow past glibc's dynamic threshold, no trimming between steps
        "MALLOC_MMAP_THRESHOLD_": str(256 * 1024 * 1024),
        "MALLOC_TRIM_THRESHOLD_": str(512 * 1024 * 1024),
        "TORCH_CPP_LOG_LEVEL": "ERROR",
        "KINETO_LOG_LEVEL": "5",
    }


def _vm_peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _fmt_s(x: float) -> str:
    return f"{x:g}"


def memory_reason(limits: Limits) -> str:
    """The one-line reason for a child that hit its address-space limit."""
    return f"exceeded {_fmt_s(limits.address_space_gib)} GiB address space"


def run_sandboxed(task: str, payload: dict, run_dir: str | Path, limits: Limits | None = None,
                  on_line: Callable[[str], None] | None = None,
                  on_event: Callable[[dict], None] | None = None,
                  cancel: threading.Event | None = None) -> SandboxResult:
    """Run ``task`` on ``payload`` in a fresh, limited child process; never imports candidate code.

    ``payload["path"]`` (the candidate file) is copied into ``run_dir`` as ``mixer.py`` and the
    child sees only that copy. ``on_line(line)`` gets each stdout/stderr line of the child as it
    arrives (also written to ``run_dir/<task>.log``); ``on_event(msg)`` each intermediate JSON
    message. ``cancel``: setting this event kills the child (reason "cancelled by the caller").
    Returns when the child has exited (or was killed at ``limits.wall_s``); an exception in the
    caller's thread (e.g. KeyboardInterrupt) kills the child before it propagates."""
    if task not in TASKS:
        raise SandboxError(f"unknown sandbox task {task!r}; known tasks: {', '.join(TASKS)}")
    if limits is None:
        limits = (Limits.for_evaluation(payload.get("scale", "explore"), guards=payload.get("guards"))
                  if task == "evaluate" else Limits())
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    if "path" in payload:
        src = Path(payload["path"])
        if not src.is_file():
            raise SandboxError(f"candidate file {src} does not exist or is not a file.")
        dst = run_dir / "mixer.py"
        if src.resolve() != dst:
            shutil.copyfile(src, dst)
        payload["path"] = str(dst)
    mode = isolation_mode(limits)
    log_path = run_dir / f"{task}.log"
    request = {"task": task, "payload": payload, "run_dir": str(run_dir), "limits": limits.to_dict(),
               "isolation": mode, "project_root": str(PROJECT_ROOT)}
    r_fd, w_fd = os.pipe()
    child_cmd = [sys.executable, "-m", "training.sandbox_child", "--result-fd", str(w_fd)]
    if mode == "namespace":
        prefix = namespace_prefix()
        assert prefix is not None
        sh = shutil.which("sh", path="/usr/bin:/bin") or "/bin/sh"
        cmd = [*prefix, "--", sh, "-c", _MOUNT_SCRIPT, "sandbox", str(run_dir), *child_cmd]
    else:
        cmd = child_cmd
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=str(run_dir), env=_scrubbed_env(run_dir, limits), pass_fds=(w_fd,),
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        os.close(r_fd)
        os.close(w_fd)
        raise SandboxError(f"could not start the sandbox child: {exc}") from exc
    os.close(w_fd)

    events: list[dict] = []
    final: dict[str, Any] = {}
    max_log = int(limits.max_log_mib * 1024 * 1024)

    def read_results() -> None:
        buf = b""
        with os.fdopen(r_fd, "rb") as fh:
            while True:
                chunk = fh.read1(65536) if hasattr(fh, "read1") else fh.read(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > 64 * 1024 * 1024:  # a flood: stop listening
                    buf = b""
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        continue
                    if not isinstance(msg, dict):
                        continue
                    if msg.get("event") == "result":
                        final.clear()
                        final.update(msg)
                    else:
                        events.append(msg)
                        if on_event is not None:
                            try:
                                on_event(msg)
                            except Exception:  # a caller's callback must not kill the reader
                                pass

    def read_log() -> None:
        written = 0
        truncated = False
        assert proc.stdout is not None
        with open(log_path, "w", encoding="utf-8") as log:
            pending = b""
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    break
                pending += chunk
                parts = pending.split(b"\n")
                pending = parts.pop()
                if len(pending) > 8192:  # an endless line: cut it
                    parts.append(pending)
                    pending = b""
                for raw in parts:
                    line = raw.decode("utf-8", "replace").rstrip("\r")[:8192]
                    if written < max_log:
                        log.write(line + "\n")
                        log.flush()
                        written += len(line) + 1
                    elif not truncated:
                        log.write("[sandbox] log truncated\n")
                        truncated = True
                    if on_line is not None:
                        try:
                            on_line(line)
                        except Exception:
                            pass
            if pending:
                line = pending.decode("utf-8", "replace")[:8192]
                if written < max_log:
                    log.write(line + "\n")
                if on_line is not None:
                    try:
                        on_line(line)
                    except Exception:
                        pass

    readers = [threading.Thread(target=read_results, daemon=True, name="sandbox-results"),
               threading.Thread(target=read_log, daemon=True, name="sandbox-log")]
    for t in readers:
        t.start()
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
    except OSError:
        pass  # the child died already; the exit status says why

    killed_wall = False
    cancelled = False
    vm_peak = 0
    status = 0
    rusage = None
    last_sample = 0.0
    try:
        while True:
            try:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pid = proc.pid
                break
            if pid:
                break
            now = time.monotonic()
            if now - last_sample > 0.1:
                vm_peak = max(vm_peak, _vm_peak_kib(proc.pid))
                last_sample = now
            over = now - t0 > limits.wall_s
            if over or (cancel is not None and cancel.is_set()):
                killed_wall, cancelled = over, not over
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    except BaseException:  # interrupted caller (Ctrl-C, worker cancelled): never leave the child running
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        proc.returncode = -signal.SIGKILL
        raise
    returncode = os.waitstatus_to_exitcode(status) if status is not None else None
    proc.returncode = returncode  # reaped here; keep Popen from waiting again
    try:  # nothing of the child's session may outlive it
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for t in readers:
        t.join(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    duration = time.monotonic() - t0
    cpu_used = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0

    result = dict(final) if final else None
    if result is not None:
        result.pop("event", None)
    reason: str | None
    if killed_wall:
        ok, reason = False, f"killed after {_fmt_s(limits.wall_s)} s wall time"
    elif cancelled:
        ok, reason = False, "cancelled by the caller"
    elif result is not None:
        ok = bool(result.get("ok"))
        reason = None if ok else (result.get("reason") or "the task failed without a reason")
    else:
        ok = False
        near_mem = vm_peak * 1024 >= 0.85 * limits.address_space_gib * GIB
        if returncode is not None and returncode < 0:
            sig = -returncode
            try:
                signame = signal.Signals(sig).name
            except ValueError:
                signame = f"signal {sig}"
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= limits.cpu_s - 1):
                reason = f"exceeded {_fmt_s(limits.cpu_s)} s CPU time"
            elif sig == signal.SIGXFSZ:
                reason = f"exceeded the {_fmt_s(limits.file_size_mib)} MiB written-file size limit"
            elif near_mem:
                reason = memory_reason(limits)
            elif sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
                reason = (f"the child died from {signame} (native code crashed, possibly at the "
                          f"{_fmt_s(limits.address_space_gib)} GiB address-space limit)")
            else:
                reason = f"the child died from {signame}"
        else:
            tail = _log_tail(log_path)
            reason = f"the child exited with status {returncode} without a result" + (f": {tail}" if tail else "")
    return SandboxResult(ok=ok, result=result, reason=reason, log_path=log_path, events=events,
                         isolation=mode, duration_s=duration, returncode=returncode)


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
