"""Run untrusted mixer code in a child process on an OS boundary, and get JSON back.

Candidate code never runs in the parent. :func:`run_sandboxed` starts a fresh interpreter
(``python -I``, isolated: no current folder, no user site, no ``PYTHON*`` variables; a bootstrap
puts only this project's root on ``sys.path``, never the run folder) under **bubblewrap**
(``bwrap``, the sandbox behind Flatpak):

- new user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``): no network at all
  (only a down loopback), no view of the host's processes, and no way back into a namespace of
  the host; ``--cap-drop ALL`` (no capabilities, root or not); ``--new-session`` (no terminal
  injection); ``--die-with-parent`` (the sandbox dies with the process that started it);
- the whole filesystem read-only (``--ro-bind / /``) with a fresh ``/proc`` and a minimal,
  read-only ``/dev``; home folders (``/root``, ``/home``) hidden behind empty read-only folders, except the
  Python installation and the project, which are bound back read-only; ``/etc/shadow`` and kin
  hidden;
- one size-capped writable scratch (a tmpfs at ``/tmp`` of ``Limits.scratch_mib``) holding the
  working folder ``/tmp/run``; the candidate file is bound read-only at ``/tmp/candidate/mixer.py``.
  Nothing else is writable; nothing the candidate writes survives the run;
- the child's environment is scrubbed (PATH, HOME/TMPDIR pointing at the scratch, thread counts).

Inside, :mod:`training.sandbox_child` (the trusted *harness*) sets its rlimits (CPU seconds,
address space, written-file size, no core files), forks a *worker* that installs a seccomp filter
and the diagnostic audit hook before it loads the candidate, and alone writes the result channel
(see :mod:`training.sandbox_child`). Killing the outer ``bwrap`` process ends the whole PID
namespace, so nothing started inside - not even a ``setsid`` double-forked daemon - outlives the run.

The parent reads the result channel with bounds: at most ``Limits.max_events`` intermediate
messages, each line at most ``Limits.max_message_kib``, and exactly one final ``result``
message; a flood ends the run with a clear reason (its memory stays bounded). It enforces the
wall-time hang guard itself and kills the sandbox on timeout, cancellation or its own
interruption.

Without ``bwrap`` (or where the kernel refuses its namespaces) untrusted code is refused with a
:class:`SandboxError` that says how to install it, unless the caller passes ``trusted=True``
(code rendered by the built-in researcher) or ``Limits(unsafe_no_sandbox=True)`` (the
``--unsafe-no-sandbox`` flag): then the child runs as a plain process with rlimits and the
in-process guard only (isolation ``"none"``).

A child that dies comes back as ``SandboxResult(ok=False, reason=...)`` with a clear reason
("killed after 60 s wall time", "exceeded 180 s CPU time", "exceeded 4 GiB address space"),
never as a hang.

Tasks: ``"check"`` (payload ``{"path", "scale": {...}}``; see :mod:`training.checker`) and
``"evaluate"`` (payload ``{"path", "scale", "seed", "baseline", "guards"}``; calls
``training.evaluate.evaluate_class`` inside the worker, streaming its log lines).
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
#: Where the scratch, the working folder and the candidate appear inside the sandbox.
SCRATCH = "/tmp"
INNER_RUN_DIR = "/tmp/run"
INNER_CANDIDATE = "/tmp/candidate/mixer.py"
#: Folders hidden (an empty read-only tmpfs) inside the sandbox; the Python installation and the
#: project are bound back where they live below one of them.
HIDDEN_DIRS = ("/root", "/home", "/var/tmp", "/run", "/mnt", "/media", "/srv")
#: Files replaced by an empty file inside the sandbox (root keeps reading root-owned files).
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers")
#: GPU device nodes passed into a GPU sandbox (``Limits.gpu``) when the host has them: NVIDIA's
#: control, UVM and per-device nodes, and AMD's KFD and DRI render nodes. Nothing else of the
#: host's /dev is visible (bwrap's own minimal /dev: null, zero, random, urandom, tty, shm).
GPU_DEVICE_GLOBS = ("/dev/nvidia[0-9]*", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                    "/dev/nvidia-modeset", "/dev/nvidia-caps/*", "/dev/kfd", "/dev/dri/renderD*")
#: The bootstrap run by ``python -I -c``: only the project root goes on sys.path.
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); del sys.argv[1]; "
             "from training.sandbox_child import main; main()")
#: How to get bubblewrap (printed when it is missing).
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: "
                "`sudo dnf install bubblewrap`; or run scripts/setup.sh as root)")


@dataclass
class Limits:
    """Resource limits of one sandboxed run.

    ``cpu_s``: CPU seconds of the worker, the process that alone runs candidate code (the
    harness above it may use ``training.sandbox_child.HARNESS_CPU_S`` more for its own start-up
    and verdicts). ``threads``: torch/OpenMP threads in the child. ``scratch_mib``: size of the only writable
    folder (a tmpfs) inside the sandbox. ``max_events`` / ``max_message_kib``: bounds on the
    result channel (more is a flood: the run fails). ``unsafe_no_sandbox``: run untrusted code
    without bubblewrap when it is unavailable (rlimits and the in-process guard only - no OS
    boundary; never the default). ``gpu``: pass the host's GPU device nodes
    (:data:`GPU_DEVICE_GLOBS`) into the sandbox; the address-space rlimit is then lifted (CUDA
    reserves far more virtual memory than it touches, and fails under an 8 GiB RLIMIT_AS) and the
    parent enforces ``address_space_gib`` on the resident memory of the sandbox's processes
    instead (polled every 0.1 s, the run killed above it)."""

    cpu_s: float = 240.0
    wall_s: float = 150.0
    address_space_gib: float = 4.0
    file_size_mib: float = 64.0
    threads: int = 1
    max_log_mib: float = 16.0
    scratch_mib: float = 256.0
    max_events: int = 20000
    max_message_kib: float = 1024.0
    unsafe_no_sandbox: bool = False
    gpu: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (sent to the child)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Limits":
        """The inverse of :meth:`to_dict`; unknown keys (from another version) are ignored."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

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
                                      threads=threads, file_size_mib=256.0, scratch_mib=512.0,
                                      gpu=_wants_gpu(scale))
        fields.update(overrides)
        return cls(**fields)


def gpu_device_nodes() -> list[str]:
    """The host's GPU device nodes (:data:`GPU_DEVICE_GLOBS`) that exist, sorted."""
    import glob

    return sorted({p for g in GPU_DEVICE_GLOBS for p in glob.glob(g) if os.path.exists(p)})


def _wants_gpu(scale: Any) -> bool:
    """True when ``scale`` (a name, Scale or dict) asks for CUDA and this host has GPU device nodes."""
    if isinstance(scale, dict):
        device = scale.get("device")
    else:
        try:
            from training.scales import get_scale

            device = get_scale(scale).device if isinstance(scale, str) else getattr(scale, "device", None)
        except Exception:  # noqa: BLE001 - an unknown scale is reported by its caller
            device = None
    return device == "cuda" and bool(gpu_device_nodes())


@dataclass
class SandboxResult:
    """What came back from the child.

    ``ok``: the task ran to completion and reported success; ``result``: the harness's final
    JSON (None when it died first); ``reason``: one line saying why not ok; ``log_path``: the
    full captured stdout/stderr; ``events``: the intermediate JSON messages (e.g. finished
    checks); ``isolation``: ``"bwrap"`` (the OS sandbox) or ``"none"`` (trusted code or
    ``unsafe_no_sandbox``: rlimits and the in-process guard only); ``duration_s``;
    ``returncode`` of the child (negative: killed by that signal)."""

    ok: bool
    result: dict | None
    reason: str | None
    log_path: Path
    events: list[dict] = field(default_factory=list)
    isolation: str = "bwrap"
    duration_s: float = 0.0
    returncode: int | None = None


class SandboxError(RuntimeError):
    """The sandbox could not be started at all (bad task, missing file, no OS sandbox for
    untrusted code)."""


def _probe(cmd: list[str]) -> tuple[bool, str]:
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30, env={"PATH": "/usr/bin:/bin"})
        return r.returncode == 0, r.stdout.decode(errors="replace").strip()[-300:]
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)


@functools.lru_cache(maxsize=1)
def _bwrap_status() -> tuple[str | None, str]:
    exe = shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin:/usr/sbin:/sbin")
    if not exe or not sys.platform.startswith("linux"):
        return None, "bubblewrap (`bwrap`) is not installed"
    ok, out = _probe([exe, *_bwrap_flags(256 * 1024 * 1024), "--", "/bin/true"])
    if not ok:
        return None, f"`bwrap` is installed but cannot create its namespaces here ({out or 'no output'})"
    return exe, ""


def bwrap_path() -> str | None:
    """The path of a working ``bwrap`` (probed once with the real flags), or None."""
    return _bwrap_status()[0]


def _bwrap_flags(scratch_bytes: int, gpu: bool = False) -> list[str]:
    """The bubblewrap flags shared by every run (without the candidate and the command); with
    ``gpu``, the host's GPU device nodes are bound into the sandbox's otherwise minimal /dev."""
    devices: list[str] = []
    for node in gpu_device_nodes() if gpu else []:
        devices += ["--dev-bind", node, node]
    flags = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
             "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", *devices,
             "--remount-ro", "/dev", "--size", str(int(scratch_bytes)), "--tmpfs", SCRATCH]
    keep = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                 os.path.dirname(os.path.realpath(sys.executable)),
                                                 str(PROJECT_ROOT))})
    keep += [p for p in sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}) if p not in keep]
    # a checkout or interpreter under /tmp (a CI clone, say) would vanish behind the scratch:
    # bind it back, read-only (the writable run folder and the candidate stay the scratch's own)
    flags += _bind_back(SCRATCH, [p for p in keep if not p.startswith((INNER_RUN_DIR, os.path.dirname(INNER_CANDIDATE)))])
    for hidden in HIDDEN_DIRS:
        if not os.path.isdir(hidden) or os.path.islink(hidden):
            continue
        flags += ["--size", str(1024 * 1024), "--tmpfs", hidden]
        flags += _bind_back(hidden, keep)
        flags += ["--remount-ro", hidden]
    for f in HIDDEN_FILES:
        if os.path.isfile(f):
            flags += ["--ro-bind", "/dev/null", f]
    return flags


def _bind_back(folder: str, keep: list[str]) -> list[str]:
    """``--ro-bind`` flags that put back, on top of a tmpfs mounted at ``folder``, the outermost
    of the ``keep`` paths that lie inside it."""
    inside = [p for p in keep if p.startswith(folder.rstrip("/") + "/")]
    flags: list[str] = []
    for p in inside:
        if not any(p.startswith(q.rstrip("/") + "/") for q in inside if q != p):
            flags += ["--ro-bind", p, p]
    return flags


def isolation_mode(limits: Limits | None = None, trusted: bool = False) -> str:
    """``"bwrap"`` when the OS sandbox is available; else ``"none"`` for trusted code or with
    ``limits.unsafe_no_sandbox``; else raises :class:`SandboxError` saying how to install it."""
    limits = limits or Limits()
    exe, why = _bwrap_status()
    if exe is not None:
        return "bwrap"
    if trusted or limits.unsafe_no_sandbox:
        return "none"
    raise SandboxError(f"refusing to run untrusted code without the OS sandbox: {why}. Please {INSTALL_HINT}, "
                       "or pass --unsafe-no-sandbox (check/eval) or set sandbox.unsafe_no_sandbox = true "
                       "(loop) to run it with rlimits and an in-process guard only.")


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
        # ignored under `python -I` (the bootstrap sets sys.path); kept for the unsandboxed mode
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


def _vm_peak_kib(pid: int, field: str = "VmPeak") -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _fmt_s(x: float) -> str:
    return f"{x:g}"


def memory_reason(limits: Limits) -> str:
    """The one-line reason for a child that hit its address-space limit."""
    return f"exceeded {_fmt_s(limits.address_space_gib)} GiB address space"


def _child_command(mode: str, limits: Limits, host_candidate: Path | None, w_fd: int) -> list[str]:
    """The command line of the child: the bwrap prefix (mode ``"bwrap"``) and ``python -I``."""
    py = [sys.executable, "-I", "-B", "-c", BOOTSTRAP, str(PROJECT_ROOT), "--result-fd", str(w_fd)]
    if mode != "bwrap":
        return py
    exe = bwrap_path()
    assert exe is not None
    cmd = [exe, *_bwrap_flags(int(limits.scratch_mib * 1024 * 1024), gpu=limits.gpu)]
    if host_candidate is not None:
        cmd += ["--ro-bind", str(host_candidate), INNER_CANDIDATE]
    cmd += ["--dir", INNER_RUN_DIR, "--chdir", INNER_RUN_DIR, "--", *py, "--pidns"]
    return cmd


class _Channel:
    """The parent's bounded reader of the result pipe: at most ``max_events`` intermediate
    messages, lines of at most ``max_bytes``, exactly one ``result`` message. A breach sets
    :attr:`flood` (a reason) and stops storing anything."""

    def __init__(self, fd: int, limits: Limits, on_event: Callable[[dict], None] | None,
                 on_flood: Callable[[], None]) -> None:
        self.fd = fd
        self.max_events = max(1, int(limits.max_events))
        self.max_bytes = max(1024, int(limits.max_message_kib * 1024))
        self.on_event = on_event
        self.on_flood = on_flood
        self.events: list[dict] = []
        self.results: list[dict] = []
        self.flood: str | None = None

    def _breach(self, why: str) -> None:
        if self.flood is None:
            self.flood = why
            self.on_flood()

    def _line(self, raw: bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            self._breach("the sandbox sent a malformed message on the result channel")
            return
        if not isinstance(msg, dict):
            self._breach("the sandbox sent a malformed message on the result channel")
            return
        if msg.get("event") == "result":
            self.results.append(msg)
            if len(self.results) > 1:
                self._breach("the sandbox sent more than one result message")
            return
        if len(self.results):
            self._breach("the sandbox sent messages after its result")
            return
        if len(self.events) >= self.max_events:
            self._breach(f"the sandbox flooded the result channel (more than {self.max_events} messages)")
            return
        self.events.append(msg)
        if self.on_event is not None:
            try:
                self.on_event(msg)
            except Exception:  # a caller's callback must not kill the reader
                pass

    def read(self) -> None:
        """Read until EOF (the thread body); after a breach, drain and drop."""
        buf = bytearray()
        with os.fdopen(self.fd, "rb", buffering=0) as fh:
            while True:
                chunk = fh.read(65536)
                if not chunk:
                    break
                if self.flood is not None:
                    continue
                buf += chunk
                while self.flood is None:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line = bytes(buf[:nl])
                    del buf[:nl + 1]
                    if len(line) > self.max_bytes:
                        self._breach(f"the sandbox sent a message larger than {self.max_bytes // 1024} KiB")
                    elif line.strip():
                        self._line(line)
                if len(buf) > self.max_bytes:
                    self._breach(f"the sandbox sent a message larger than {self.max_bytes // 1024} KiB")
                if self.flood is not None:
                    buf = bytearray()


def run_sandboxed(task: str, payload: dict, run_dir: str | Path, limits: Limits | None = None,
                  on_line: Callable[[str], None] | None = None,
                  on_event: Callable[[dict], None] | None = None,
                  cancel: threading.Event | None = None, trusted: bool = False) -> SandboxResult:
    """Run ``task`` on ``payload`` in a fresh, limited child process; never imports candidate code.

    ``payload["path"]`` (the candidate file) is copied into ``run_dir`` as ``mixer.py``; under
    bwrap the child sees only that copy, bound read-only at ``INNER_CANDIDATE``, and works in a
    private scratch (``run_dir`` on the host holds only the parent's ``<task>.log`` and the
    copy). ``on_line(line)`` gets each stdout/stderr line of the child as it arrives (also
    written, capped, to ``run_dir/<task>.log``); ``on_event(msg)`` each intermediate JSON
    message. ``cancel``: setting this event kills the child (reason "cancelled by the caller").
    ``trusted``: the code is the project's own (rendered by the built-in researcher): it may run
    without bwrap where bwrap is unavailable. Raises :class:`SandboxError` for a bad task, a
    missing file, or untrusted code without the OS sandbox (see :func:`isolation_mode`).
    Returns when the child has exited (or was killed at ``limits.wall_s``); an exception in the
    caller's thread (e.g. KeyboardInterrupt) kills the child before it propagates."""
    if task not in TASKS:
        raise SandboxError(f"unknown sandbox task {task!r}; known tasks: {', '.join(TASKS)}")
    if limits is None:
        limits = (Limits.for_evaluation(payload.get("scale", "explore"), guards=payload.get("guards"))
                  if task == "evaluate" else Limits())
    mode = isolation_mode(limits, trusted=trusted)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    host_candidate: Path | None = None
    if "path" in payload:
        src = Path(payload["path"])
        if not src.is_file():
            raise SandboxError(f"candidate file {src} does not exist or is not a file.")
        host_candidate = run_dir / "mixer.py"
        if src.resolve() != host_candidate:
            shutil.copyfile(src, host_candidate)
        payload["path"] = INNER_CANDIDATE if mode == "bwrap" else str(host_candidate)
    child_run_dir = INNER_RUN_DIR if mode == "bwrap" else str(run_dir)
    log_path = run_dir / f"{task}.log"
    request = {"task": task, "payload": payload, "run_dir": child_run_dir, "limits": limits.to_dict(),
               "isolation": mode, "project_root": str(PROJECT_ROOT)}
    r_fd, w_fd = os.pipe()
    cmd = _child_command(mode, limits, host_candidate, w_fd)
    env = _scrubbed_env(Path(child_run_dir), limits)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=str(run_dir), env=env, pass_fds=(w_fd,),
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        os.close(r_fd)
        os.close(w_fd)
        raise SandboxError(f"could not start the sandbox child: {exc}") from exc
    os.close(w_fd)

    flooded = threading.Event()
    channel = _Channel(r_fd, limits, on_event, flooded.set)
    max_log = int(limits.max_log_mib * 1024 * 1024)

    def read_log() -> None:
        written = 0
        truncated = False
        assert proc.stdout is not None
        with open(log_path, "w", encoding="utf-8") as log:
            pending = b""

            def emit(raw: bytes) -> None:
                nonlocal written, truncated
                line = raw.decode("utf-8", "replace").rstrip("\r")[:8192]
                if written < max_log:
                    log.write(line + "\n")
                    log.flush()
                    written += len(line) + 1
                elif not truncated:
                    log.write("[sandbox] log truncated\n")
                    log.flush()
                    truncated = True
                if on_line is not None and not truncated:
                    try:
                        on_line(line)
                    except Exception:
                        pass

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
                    emit(raw)
            if pending:
                emit(pending)

    readers = [threading.Thread(target=channel.read, daemon=True, name="sandbox-results"),
               threading.Thread(target=read_log, daemon=True, name="sandbox-log")]
    for t in readers:
        t.start()
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
    except OSError:
        pass  # the child died already; the exit status says why

    def kill() -> None:
        # the outer bwrap (or the plain child) leads its own session; under bwrap, its death ends
        # the sandbox's PID namespace (--die-with-parent), and with it every process inside
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    killed_wall = False
    cancelled = False
    vm_peak = 0
    rss_over = False  # GPU mode: resident memory above the limit (the address space is not limited)
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
                vm_peak = max(vm_peak, _tree_vm_peak_kib(proc.pid))
                if limits.gpu and _tree_kib(proc.pid, "VmRSS", sum) * 1024 > limits.address_space_gib * GIB:
                    rss_over = True
                last_sample = now
            over = now - t0 > limits.wall_s
            if over or rss_over or flooded.is_set() or (cancel is not None and cancel.is_set()):
                killed_wall, cancelled = over, not over and not rss_over and not flooded.is_set()
                kill()
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    except BaseException:  # interrupted caller (Ctrl-C, worker cancelled): never leave the child running
        kill()
        try:
            os.wait4(proc.pid, 0)
        except ChildProcessError:
            pass
        proc.returncode = -signal.SIGKILL
        raise
    returncode = os.waitstatus_to_exitcode(status) if status is not None else None
    proc.returncode = returncode  # reaped here; keep Popen from waiting again
    kill()  # nothing of the child's session may outlive it
    for t in readers:
        t.join(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    duration = time.monotonic() - t0
    cpu_used = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
    events = channel.events
    final = channel.results[0] if len(channel.results) == 1 else None

    result = dict(final) if final else None
    if result is not None:
        result.pop("event", None)
    reason: str | None
    if channel.flood is not None:
        ok, reason, result = False, channel.flood, None
    elif rss_over:
        ok, reason = False, (f"exceeded {_fmt_s(limits.address_space_gib)} GiB resident memory "
                             "(GPU sandbox: the limit applies to resident memory)")
    elif killed_wall:
        ok, reason = False, f"killed after {_fmt_s(limits.wall_s)} s wall time"
    elif cancelled:
        ok, reason = False, "cancelled by the caller"
    elif result is not None and returncode != 0:
        ok = False
        reason = f"the sandbox exited with status {returncode} after its result" if not result.get("reason") \
            else str(result.get("reason"))
    elif result is not None:
        ok = bool(result.get("ok") is True)
        reason = None if ok else (str(result.get("reason") or "") or "the task failed without a reason")
    else:
        ok = False
        near_mem = vm_peak * 1024 >= 0.85 * limits.address_space_gib * GIB
        sig = 0
        if returncode is not None and returncode < 0:
            sig = -returncode
        elif mode == "bwrap" and returncode is not None and 128 < returncode < 128 + 65:
            sig = returncode - 128  # bwrap reports a child killed by a signal as 128 + signal
        if sig:
            try:
                signame = signal.Signals(sig).name
            except ValueError:
                signame = f"signal {sig}"
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= limits.cpu_s - 1):
                # the worker's own CPU limit is reported by the harness (with the check that was
                # running); a signal here means the harness itself ran out of its allowance
                from training.sandbox_child import HARNESS_CPU_S

                reason = (f"exceeded {_fmt_s(limits.cpu_s + HARNESS_CPU_S)} s CPU time in the harness "
                          f"(the worker's {_fmt_s(limits.cpu_s)} s plus its start-up allowance)")
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


def _tree_vm_peak_kib(pid: int) -> int:
    """The largest VmPeak among ``pid`` and its descendants (under bwrap the harness and its
    worker are grandchildren of the process the parent started)."""
    return _tree_kib(pid, "VmPeak", max)


def _tree_kib(pid: int, field: str, combine: Callable[[list[int]], int]) -> int:
    """``combine`` (max or sum) of a /proc status field (kiB) over ``pid`` and its descendants."""
    vals = [_vm_peak_kib(pid, field)]
    todo, seen = [pid], {pid}
    while todo and len(seen) < 64:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                kids = [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            continue
        for k in kids:
            if k not in seen:
                seen.add(k)
                todo.append(k)
                vals.append(_vm_peak_kib(k, field))
    return int(combine(vals))


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
