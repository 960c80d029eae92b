"""The in-process walls shared by the sandbox harness and its worker.

The harness (:mod:`training.sandbox_child`) and the worker (:mod:`training.worker`) both need the
runtime guard, the monkeypatch watch and the guarded candidate loader; they live here so that
neither imports the other (and the checker, which forks the worker through
:mod:`training.harness`, never reaches the harness module). Standard library only at import time.

- :class:`Guard`: an audit hook that, while ``active``, refuses sockets, subprocesses,
  exec/fork/spawn, signals to other processes, ctypes, unpickling, writes and deletions outside
  the run folder and reads outside :func:`read_roots`; refusing socket stand-ins; restricted
  builtins for the candidate module;
- :class:`MutationWatch` / :func:`default_watch`: notices monkeypatching of torch, einops, math
  and training.ops;
- :func:`load_candidate`: static check, then the candidate module under restricted builtins.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any


def _within(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


#: Audit events refused outright while the guard is active (prefix match on "name." forms).
_DENY_EVENTS = (
    "socket.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "os.kill", "os.killpg", "os.chdir", "os.chroot",
    "pty.spawn", "ctypes.", "resource.setrlimit", "resource.prlimit", "sys.addaudithook",
    "pickle.find_class", "urllib.Request", "http.client.", "ftplib.", "smtplib.", "poplib.",
    "imaplib.", "nntplib.", "telnetlib.", "webbrowser.open", "mmap.__new__", "signal.pthread_kill",
    "sys._current_frames", "sys._current_exceptions", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "code.__new__", "function.__new__", "builtins.input", "builtins.breakpoint",
    "_posixsubprocess.", "os.startfile", "sys.setprofile", "sys.settrace", "cpython.PyInterpreterState_",
    "sqlite3.", "syslog.", "shutil.chown", "os.setxattr", "os.removexattr", "os.chflags",
    "os.lchflags", "os.link", "os.symlink",
)
#: Path-bearing events allowed only inside the run folder (index of the path arguments).
_WRITE_PATH_EVENTS = {
    "os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
    "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,),
    "shutil.copytree": (1,), "shutil.rmtree": (0,), "shutil.move": (0, 1),
    "shutil.make_archive": (0,), "shutil.unpack_archive": (1,),
}
_READ_PATH_EVENTS = {"os.listdir": 0, "os.scandir": 0, "glob.glob": 0, "os.walk": 0}


class SandboxViolation(PermissionError):
    """Raised by the guard when running code tries something the sandbox forbids."""


class Guard:
    """The runtime walls (audit hook, socket guard, restricted builtins, monkeypatch watch).

    The audit hook is process-wide and cannot be removed; it does nothing until :attr:`active`
    is set, which happens right before candidate code is executed."""

    def __init__(self, run_dir: str, read_roots: list[str]) -> None:
        self.run_dir = os.path.realpath(run_dir)
        self.write_roots = (self.run_dir,)
        self.read_roots = tuple(sorted({os.path.realpath(r) for r in read_roots if r} | {self.run_dir}))
        self.active = False
        self.violations: list[str] = []
        self._busy = False

    # ---------------------------------------------------------------- audit hook
    def install(self) -> None:
        """Install the audit hook and the socket guard (irreversible)."""
        sys.addaudithook(self._hook)
        self._install_socket_guard()

    def _refuse(self, what: str) -> None:
        msg = f"sandbox: {what} is not allowed"
        if len(self.violations) < 50:
            self.violations.append(msg)
        print(msg, file=sys.stderr, flush=True)
        raise SandboxViolation(msg)

    def _resolve(self, p: Any) -> str | None:
        if p is None or isinstance(p, int):
            return None
        try:
            p = os.fsdecode(p)
        except TypeError:
            return None
        if not os.path.isabs(p):
            p = os.path.join(os.getcwd(), p)
        return os.path.realpath(p)

    def _hook(self, event: str, args: tuple) -> None:
        if not self.active or self._busy:
            return
        self._busy = True
        try:
            self._check(event, args)
        finally:
            self._busy = False

    def _check(self, event: str, args: tuple) -> None:
        if event == "open":
            path = self._resolve(args[0] if args else None)
            if path is None:
                return
            mode = args[1] if len(args) > 1 else None
            flags = args[2] if len(args) > 2 else 0
            writing = False
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            elif isinstance(flags, int):
                writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if writing:
                if path != "/dev/null" and not _within(path, self.write_roots):
                    self._refuse(f"writing {path} (outside the run folder)")
            elif not _within(path, self.read_roots):
                self._refuse(f"reading {path}")
            return
        for prefix in _DENY_EVENTS:
            if event == prefix or (prefix.endswith((".", "_")) and event.startswith(prefix)) \
                    or event.startswith(prefix + "."):
                self._refuse(f"`{event}`")
        if event in _WRITE_PATH_EVENTS:
            for i in _WRITE_PATH_EVENTS[event]:
                path = self._resolve(args[i] if len(args) > i else None)
                if path is not None and not _within(path, self.write_roots):
                    self._refuse(f"`{event}` on {path} (outside the run folder)")
        elif event in _READ_PATH_EVENTS:
            i = _READ_PATH_EVENTS[event]
            path = self._resolve(args[i] if len(args) > i else None)
            if path is not None and not _within(path, self.read_roots):
                self._refuse(f"listing {path}")

    def _install_socket_guard(self) -> None:
        import socket

        guard = self

        class RefusedSocket(socket.socket):
            """A socket class that refuses to be created while the guard is active."""

            def __init__(self, *a: Any, **k: Any) -> None:
                if guard.active:
                    guard._refuse("creating a socket")
                super().__init__(*a, **k)

        def refused(*a: Any, **k: Any) -> Any:
            guard._refuse("network access")

        socket.socket = RefusedSocket  # type: ignore[misc]
        for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
                     "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
            if hasattr(socket, name):
                setattr(socket, name, refused)

    # ---------------------------------------------------------------- candidate builtins
    def restricted_builtins(self, module_name: str) -> dict[str, Any]:
        """The ``__builtins__`` dict given to the candidate module."""
        import builtins

        from training import static_check as sc

        real_import = builtins.__import__
        real_getattr = getattr
        allowed = sc.ALLOWED_MODULES
        forbidden_attrs = sc.FORBIDDEN_ATTRS

        def module_ok(mod: types.ModuleType) -> bool:
            name = mod.__name__
            return name in allowed or name.startswith(("torch.", "einops.")) and not any(
                part in forbidden_attrs for part in name.split(".")[1:])

        def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                           level: int = 0) -> Any:
            if level:
                self._refuse(f"relative import of {name!r}")
            fromlist = tuple(fromlist or ())
            if name not in allowed and not (name == "training" and fromlist == ("ops",)):
                self._refuse(f"importing {name!r}")
            mod = real_import(name, globals, locals, fromlist, 0)
            for item in fromlist:
                if item == "*":
                    self._refuse("star import")
                val = real_getattr(mod, item, None)
                if isinstance(val, types.ModuleType) and not module_ok(val):
                    self._refuse(f"importing {name}.{item}")
                permitted = name == "training" and item == "ops"  # `from training import ops`
                if (item in forbidden_attrs and not permitted) or (item.startswith("_") and name != "__future__"):
                    self._refuse(f"importing {name}.{item}")
            return mod

        def bad_name(obj: Any, name: Any) -> bool:
            if not isinstance(name, str):
                return True
            if name.startswith("__") and name.endswith("__"):
                return name != "__init__"
            if name in forbidden_attrs:
                return True
            return name.startswith("_") and isinstance(obj, (types.ModuleType, type))

        def guarded_getattr(obj: Any, name: Any, *default: Any) -> Any:
            if bad_name(obj, name):
                self._refuse(f"getattr(..., {name!r})")
            val = real_getattr(obj, name, *default)
            if isinstance(val, types.ModuleType) and not module_ok(val):
                self._refuse(f"getattr(..., {name!r}) reaching module {val.__name__}")
            return val

        def guarded_hasattr(obj: Any, name: Any) -> bool:
            if bad_name(obj, name):
                self._refuse(f"hasattr(..., {name!r})")
            return hasattr(obj, name)

        def own_target(obj: Any) -> bool:
            if isinstance(obj, types.ModuleType):
                return False
            if isinstance(obj, type):
                return real_getattr(obj, "__module__", None) == module_name
            return True

        def guarded_setattr(obj: Any, name: Any, value: Any) -> None:
            if bad_name(obj, name) or not own_target(obj):
                self._refuse(f"setattr(..., {name!r})")
            setattr(obj, name, value)

        def guarded_delattr(obj: Any, name: Any) -> None:
            if bad_name(obj, name) or not own_target(obj):
                self._refuse(f"delattr(..., {name!r})")
            delattr(obj, name)

        removed = set(sc.FORBIDDEN_NAMES) | {"__loader__", "__spec__", "__package__", "__doc__"}
        safe = {k: v for k, v in vars(builtins).items() if k not in removed}
        safe.update(__import__=guarded_import, getattr=guarded_getattr, hasattr=guarded_hasattr,
                    setattr=guarded_setattr, delattr=guarded_delattr, __name__="builtins")
        return safe


class MutationWatch:
    """Remembers the attributes of the modules and classes the checker and trainer rely on, and
    reports any that candidate code replaced or deleted (monkeypatching)."""

    def __init__(self, targets: dict[str, Any]) -> None:
        self.targets = targets
        self.snapshot = {name: dict((k, id(v)) for k, v in vars(obj).items()) for name, obj in targets.items()}
        self.pinned = [dict(vars(obj)) for obj in targets.values()]  # keep ids stable

    def changes(self) -> list[str]:
        """Names of replaced or deleted attributes, e.g. ``['torch.isfinite']``.

        torch itself wraps a few functions when a subsystem loads lazily (importing
        ``torch._dynamo`` replaces ``torch.manual_seed`` by a wrapper whose ``__wrapped__`` is
        the original); a replacement whose ``__wrapped__`` is the original and whose code lives
        in torch's own package is not counted."""
        import torch

        torch_dir = os.path.dirname(os.path.realpath(torch.__file__)) + os.sep
        out = []
        for (name, obj), pinned in zip(self.targets.items(), self.pinned):
            now = vars(obj)
            for k, ident in self.snapshot[name].items():
                if k not in now:
                    out.append(f"{name}.{k}")
                elif id(now[k]) != ident:
                    new = now[k]
                    code = getattr(new, "__code__", None)
                    benign = getattr(new, "__wrapped__", None) is pinned.get(k) and code is not None \
                        and os.path.realpath(code.co_filename).startswith(torch_dir)
                    if not benign:
                        out.append(f"{name}.{k}")
        return out


def default_watch() -> MutationWatch:
    """The watch over torch, torch.nn, torch.nn.functional, torch.Tensor, nn.Module, einops,
    math, training.ops with its submodules and classes (those that are importable)."""
    import math

    import torch
    import torch.nn.functional as F

    targets: dict[str, Any] = {"torch": torch, "torch.nn": torch.nn, "torch.nn.functional": F,
                               "torch.Tensor": torch.Tensor, "torch.nn.Module": torch.nn.Module,
                               "torch.nn.Linear": torch.nn.Linear, "math": math,
                               "torch.autograd": torch.autograd}
    try:
        import einops

        targets["einops"] = einops
    except ImportError:
        pass
    try:
        from training import ops
    except Exception:  # a broken ops package: its own tests fail; not the candidate's fault
        ops = None
    if ops is not None:
        targets.update(_ops_targets())
    return MutationWatch(targets)


def _ops_targets() -> dict[str, Any]:
    """training.ops, each of its submodules (the chunked ops call their helpers through them) and
    each class defined there (autograd Functions, modules), by dotted name."""
    out: dict[str, Any] = {}
    for name, mod in sorted(sys.modules.items()):
        if mod is None or not (name == "training.ops" or name.startswith("training.ops.")):
            continue
        out[name] = mod
        for attr, obj in vars(mod).items():
            if isinstance(obj, type) and getattr(obj, "__module__", "") == name:
                out[f"{name}.{attr}"] = obj
    return out


CANDIDATE_MODULE = "asiarch_candidate"


class CandidateError(Exception):
    """The candidate failed to load or broke a sandbox rule; the message is the reason."""


def load_candidate(path: str | Path, guard: Guard, static: bool = True) -> type:
    """Statically check, then execute the candidate file with restricted builtins and return its
    ``Mixer`` class. Must be called with ``guard.active`` set."""
    from training.static_check import static_check

    source = Path(path).read_text(encoding="utf-8", errors="replace")
    if static:
        report = static_check(source)
        if not report.ok:
            raise CandidateError(f"static check failed: {report.summary()}")
    code = compile(source, str(path), "exec", dont_inherit=True)
    mod = types.ModuleType(CANDIDATE_MODULE)
    mod.__dict__["__builtins__"] = guard.restricted_builtins(CANDIDATE_MODULE)
    mod.__dict__["__file__"] = str(path)
    sys.modules[CANDIDATE_MODULE] = mod
    exec(code, mod.__dict__)
    cls = mod.__dict__.get("Mixer")
    import torch

    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise CandidateError("the file does not define `class Mixer(nn.Module)`")
    return cls


def read_roots(project_root: str, extra: list[str]) -> list[str]:
    """The folders the guard lets running code read: the Python installation, the project, this
    process's /proc entries, a few system files and folders, ``sys.path`` and ``extra``."""
    pid = os.getpid()
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, project_root, f"/proc/{pid}", "/proc/self",
             "/proc/thread-self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys/kernel",
             "/proc/sys/vm", "/sys/devices/system/cpu", "/sys/devices/system/node", "/sys/fs/cgroup", "/dev/null",
             "/dev/urandom", "/dev/random", "/dev/shm", "/usr/lib", "/usr/share", "/usr/local/lib",
             "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime"]
    roots += [p for p in sys.path if p and os.path.isdir(p)]
    return roots + list(extra)


def memory_message(exc: BaseException) -> bool:
    """Whether ``exc`` is (or reports) running out of memory (torch raises RuntimeErrors for it)."""
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "bad_alloc" in text \
        or "Cannot allocate memory" in text or "not enough memory" in text
