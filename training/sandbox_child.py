"""The sandbox child: ``python -m training.sandbox_child --result-fd N [--request FILE]``.

Started only by :func:`training.sandbox.run_sandboxed`. It reads its request (JSON) from stdin or
``--request FILE``, then, in this order:

1. applies its resource limits (address space, CPU seconds, written-file size, no core files),
   ignores SIGXFSZ (an oversized write fails with an error instead of killing), enters the run
   folder;
2. pre-imports torch and every allowed module (so the guard never has to let candidate code load
   anything new) and the task's own code;
3. installs the runtime guard (:class:`Guard`): an audit hook that, while active, refuses sockets,
   subprocesses, exec/fork/spawn, signals to other processes, ctypes, unpickling, writes and
   deletions outside the run folder and reads outside the project, the Python installation and a
   few system folders; ``socket.socket`` and friends replaced by refusing stand-ins; restricted
   builtins for the candidate module (no open/eval/exec/compile/__import__/globals, an import
   allow-list, getattr/setattr refusing dunders and forbidden names); a watch that notices
   monkeypatching of torch, einops, math and training.ops;
4. re-runs the static check (the child never executes code that fails it, unless the trusted
   caller turned it off for a test), loads the candidate and runs the task;
5. writes JSON lines to the result fd: intermediate ``{"event": ...}`` messages and a final
   ``{"event": "result", "ok": ..., "reason": ..., ...}``.

Candidate output goes to stdout/stderr, which the parent captures and streams.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import traceback
import types
from pathlib import Path
from typing import Any, Callable

GIB = 1024 ** 3


class ResultChannel:
    """JSON lines to the parent over the inherited pipe fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, msg: dict[str, Any]) -> None:
        """Write one message (one line)."""
        data = (json.dumps(msg, default=_json_default) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


def _json_default(o: Any) -> Any:
    try:
        import math

        f = float(o)
        return f if math.isfinite(f) else str(f)
    except (TypeError, ValueError):
        return str(o)


def apply_limits(limits: dict[str, Any]) -> None:
    """Set this process's rlimits (soft = hard where raising back must be impossible)."""
    as_bytes = int(float(limits["address_space_gib"]) * GIB)
    cpu = max(1, int(float(limits["cpu_s"])))
    fsize = int(float(limits["file_size_mib"]) * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    # soft limit -> SIGXCPU (clear reason in the parent); hard limit a little later -> SIGKILL
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


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


def _preimport(task: str) -> None:
    """Import everything trusted code will need (torch and what it loads lazily, e.g. sympy and
    mpmath for symbolic shapes; einops; training.ops; the task's own modules) before the worker
    is forked, so that nothing is imported later from a place the candidate could have written."""
    import dataclasses  # noqa: F401
    import functools  # noqa: F401
    import math  # noqa: F401
    import socket  # noqa: F401
    import typing  # noqa: F401

    import torch
    import torch.nn  # noqa: F401
    import torch.nn.functional  # noqa: F401

    for name in ("sympy", "mpmath", "einops", "einops.layers.torch"):
        try:
            __import__(name)
        except ImportError:
            pass
    try:
        import training.ops  # noqa: F401
    except Exception as exc:  # reported when a candidate imports it
        print(f"[sandbox] training.ops is not importable: {exc}", file=sys.stderr, flush=True)
    import training.checker  # noqa: F401
    import training.harness  # noqa: F401
    import training.static_check  # noqa: F401
    import training.wire  # noqa: F401
    import training.worker  # noqa: F401
    if task == "evaluate":
        import training.evaluate  # noqa: F401
    del torch


def _read_roots(project_root: str, extra: list[str]) -> list[str]:
    pid = os.getpid()
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, project_root, f"/proc/{pid}", "/proc/self",
             "/proc/thread-self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys/kernel",
             "/proc/sys/vm", "/sys/devices/system/cpu", "/sys/devices/system/node", "/sys/fs/cgroup", "/dev/null",
             "/dev/urandom", "/dev/random", "/dev/shm", "/usr/lib", "/usr/share", "/usr/local/lib",
             "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime"]
    roots += [p for p in sys.path if p and os.path.isdir(p)]
    return roots + list(extra)


def _memory_message(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "bad_alloc" in text \
        or "Cannot allocate memory" in text or "not enough memory" in text


def run_task(request: dict[str, Any], channel: ResultChannel) -> dict[str, Any]:
    """The harness: dispatch the request to its task; returns the final result dict.

    ``check`` runs entirely in this trusted process, which forks the worker that alone loads the
    candidate (:func:`training.checker.run_dynamic_checks`); the verdict is computed here."""
    task = request["task"]
    payload = request["payload"]
    _preimport(task)

    def emit(msg: dict[str, Any]) -> None:
        channel.send(msg)

    if task == "check":
        from training.checker import run_dynamic_checks

        options = dict(payload.get("options") or {})
        options.setdefault("mem_reason", f"exceeded {float(request['limits']['address_space_gib']):g} GiB address space")
        options.setdefault("threads", request["limits"].get("threads", 1))
        return run_dynamic_checks({**request, "payload": {**payload, "options": options}}, emit)
    if task == "evaluate":
        return _evaluate_in_worker(request, emit)
    return {"ok": False, "reason": f"unknown task {task!r}"}


def _json_safe(o: Any, depth: int = 0) -> Any:
    """A copy of the worker's JSON with only plain values (bounded depth, string lengths)."""
    if depth > 8:
        return None
    if isinstance(o, bool) or o is None or isinstance(o, int):
        return o
    if isinstance(o, float):
        return o
    if isinstance(o, str):
        return o[:4000]
    if isinstance(o, list):
        return [_json_safe(v, depth + 1) for v in o[:5000]]
    if isinstance(o, dict):
        return {str(k)[:200]: _json_safe(v, depth + 1) for k, v in list(o.items())[:500]}
    return None


#: How far the harness's own probe accuracy / validation loss may differ from the worker's report,
#: and how much earlier logits may move when the harness changes later tokens.
METRIC_TOL = 1e-4
#: CPU seconds the worker spends outside the evaluator's own clock (warm-up, loading, verification)
CPU_SLACK_S = 15.0
LOGIT_LEAK_TOL = 1e-4


def _verify_metrics(client: Any, payload: dict[str, Any], metrics: dict[str, Any],
                    kept: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Recompute, in the harness, what the worker reported: each probe's accuracy from the logits
    of the worker's trained probe model on held-out examples the harness generates, the
    validation loss from the trained language model's logits on validation batches the harness
    reads, and a causality spot check of every trained model (the harness replaces the tokens
    after a secret position and compares the earlier logits). Returns (problem or None, what
    was verified)."""
    import os
    import random

    import torch

    from training import probes as P
    from training.harness import WorkerFailed
    from training.trainer import IGNORE, sequence_loss

    scale = payload_scale(payload)
    seed = int(payload.get("seed", 0))
    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    info: dict[str, Any] = {"probes": {}, "val_loss": None, "max_logit_leak": 0.0}

    def logits(label: str, x: Any) -> Any:
        _, (y,) = client.call("logits", {"label": label}, [x], n_out=1)
        if y.dim() != 3 or tuple(y.shape[:2]) != tuple(x.shape):
            raise WorkerFailed("protocol", f"logits of shape {tuple(y.shape)} for tokens {tuple(x.shape)}")
        return y

    def spot_check(label: str, x: Any, vocab: int) -> str | None:
        x = x[:8]
        t = rng.randrange(1, x.shape[1])
        x2 = x.clone()
        g = torch.Generator().manual_seed(rng.randrange(2 ** 31))
        x2[:, t:] = torch.randint(0, vocab, tuple(x2[:, t:].shape), generator=g)
        a, b = logits(label, x), logits(label, x2)
        leak = float(torch.nan_to_num((a[:, :t] - b[:, :t]).abs(), nan=float("inf")).max()) if t else 0.0
        info["max_logit_leak"] = max(info["max_logit_leak"], leak)
        if leak > LOGIT_LEAK_TOL:
            return f"the trained {label} model is not causal: changing tokens {t}.. moved earlier logits by {leak:.3g}"
        return None

    reported = metrics.get("probes") if isinstance(metrics.get("probes"), dict) else {}
    for i, spec in enumerate(scale.probes):
        acc_w = reported.get(spec.label)
        if spec.label not in kept or not isinstance(acc_w, (int, float)):
            continue
        x, y = P.generate(spec, spec.eval_examples, P.EVAL_SEED_OFFSET + seed * 1000 + i)
        correct = total = 0
        for j in range(0, x.shape[0], 64):
            pred = logits(spec.label, x[j:j + 64]).argmax(dim=-1)
            yy = y[j:j + 64]
            mask = yy != IGNORE
            correct += int((pred[mask] == yy[mask]).sum())
            total += int(mask.sum())
        acc_h = correct / max(total, 1)
        info["probes"][spec.label] = acc_h
        if abs(acc_h - float(acc_w)) > METRIC_TOL:
            return (f"the worker reported {spec.label} accuracy {float(acc_w):.4f}; the harness measured "
                    f"{acc_h:.4f}"), info
        problem = spot_check(spec.label, x, spec.vocab_size)
        if problem:
            return problem, info
    vl_w = metrics.get("val_loss")
    if "lm" in kept and isinstance(vl_w, (int, float)):
        from training.data import load_corpus, validation_batches

        corpus = load_corpus((payload.get("kwargs") or {}).get("corpus_paths"))
        val = validation_batches(corpus.val, scale.batch_size, scale.seq_len, scale.val_batches)
        total, count = 0.0, 0
        for x, y in val:
            n = int((y != IGNORE).sum())
            total += float(sequence_loss(logits("lm", x), y)) * n
            count += n
        vl_h = total / max(count, 1)
        info["val_loss"] = vl_h
        if not abs(vl_h - float(vl_w)) <= METRIC_TOL * max(1.0, abs(vl_h)):
            return f"the worker reported validation loss {float(vl_w):.5f}; the harness measured {vl_h:.5f}", info
        problem = spot_check("lm", val[0][0], 256)
        if problem:
            return problem, info
    return None, info


def _harness_lm_eval(client: Any, payload: dict[str, Any], metrics: dict[str, Any], kept: list[str],
                     verified: dict[str, Any]) -> str | None:
    """At a scale with lm-eval tasks: run them here, in the harness, on log-likelihoods computed
    from the logits the worker returns for each request batch of the trained language model
    (the worker never reports a score), and write ``metrics["lm_eval"]`` and
    ``metrics["benchmark"]``. The first batch is also spot-checked for causality. Returns a
    problem or None."""
    import torch

    from training.harness import WorkerFailed
    from training.lm_eval_bridge import LMEvalError

    scale = payload_scale(payload)
    metrics["benchmark_kind"] = scale.benchmark  # the scale decides, not the worker's report
    metrics["lm_eval_tasks"] = list(scale.lm_eval_tasks) if scale.benchmark == "lm_eval" else []
    if scale.benchmark != "lm_eval":
        return None
    if "lm" not in kept:
        return "the worker kept no trained language model for the lm-eval tasks"
    import os
    import random

    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    state = {"checked": False, "calls": 0}

    def logits(x: Any) -> Any:
        _, (y,) = client.call("logits", {"label": "lm"}, [x.cpu()], n_out=1)
        if y.dim() != 3 or tuple(y.shape[:2]) != tuple(x.shape) or y.shape[-1] < 256:
            raise WorkerFailed("protocol", f"logits of shape {tuple(y.shape)} for tokens {tuple(x.shape)}")
        return y

    def model(ids: Any) -> Any:
        y = logits(ids)
        state["calls"] += 1
        if not state["checked"] and ids.shape[1] > 1:
            state["checked"] = True
            t = rng.randrange(1, ids.shape[1])
            x2 = ids.clone()
            x2[:, t:] = torch.randint(0, 256, tuple(x2[:, t:].shape),
                                      generator=torch.Generator().manual_seed(rng.randrange(2 ** 31)))
            leak = float(torch.nan_to_num((y[:, :t] - logits(x2)[:, :t]).abs(), nan=float("inf")).max())
            verified["max_logit_leak"] = max(float(verified.get("max_logit_leak") or 0.0), leak)
            if leak > LOGIT_LEAK_TOL:
                raise LMEvalError(f"the trained lm model is not causal on an lm-eval batch: changing tokens {t}.. "
                                  f"moved earlier logits by {leak:.3g}")
        return y

    from training.evaluate import add_lm_eval

    try:
        add_lm_eval(metrics, model, scale, int(payload.get("seed", 0)),
                    allow_hub=bool(payload.get("lm_eval_allow_hub", False)),
                    log=lambda line: print(line, flush=True))
    except WorkerFailed as exc:
        return f"the harness could not score the lm-eval tasks: {exc.reason}"
    except LMEvalError as exc:
        return f"lm-eval: {exc}"
    metrics["lm_eval"]["computed_by"] = "harness"
    metrics["lm_eval"]["logit_calls"] = state["calls"]
    verified["lm_eval"] = {t: v["score"] for t, v in metrics["lm_eval"]["tasks"].items()}
    return None


class HalfwayCheckpoint:
    """The harness's side of the LM run's half-way checkpoint (``training.early_stop``).

    When the worker reaches step ``lm_steps // 2`` it waits; :meth:`answer` measures the
    checkpoint loss here, from the logits the worker returns for the fixed training-split
    windows (``training.evaluate.checkpoint_batches``), and, when the payload asks for early
    stopping (``early_stop: {spreads}``), decides against the seed's per-seed values in the
    payload's ``baseline`` (:func:`training.early_stop.reference` and ``decide``). :meth:`apply`
    then writes the harness's ``checkpoint`` and ``early_stop`` into the metrics, whatever the
    worker reported, and makes a stopped run ``stopped_early``."""

    def __init__(self, payload: dict[str, Any]) -> None:
        from training.early_stop import checkpoint_step

        self.payload = payload
        self.scale = payload_scale(payload)
        self.step = checkpoint_step(self.scale.lm_steps) if self.scale.has_lm else None
        self.client: Any = None
        self.measured: dict[str, Any] | None = None
        self.decision: Any = None

    def _loss(self) -> tuple[float | None, str | None]:
        from training.data import load_corpus
        from training.evaluate import checkpoint_batches
        from training.harness import WorkerFailed
        from training.trainer import IGNORE, sequence_loss
        from training.worker import CHECKPOINT_LABEL

        corpus = load_corpus((self.payload.get("kwargs") or {}).get("corpus_paths"))
        total, count = 0.0, 0
        for x, y in checkpoint_batches(corpus, self.scale):
            try:
                _, (z,) = self.client.call("logits", {"label": CHECKPOINT_LABEL}, [x], n_out=1)
            except WorkerFailed as exc:
                if exc.kind in ("died", "protocol"):
                    raise
                return None, f"the half-trained model failed on the checkpoint batches: {exc.reason}"
            if z.dim() != 3 or tuple(z.shape[:2]) != tuple(x.shape) or z.shape[-1] < 256:
                raise WorkerFailed("protocol", f"checkpoint logits of shape {tuple(z.shape)} for tokens {tuple(x.shape)}")
            n = int((y != IGNORE).sum())
            total += float(sequence_loss(z, y)) * n
            count += n
        loss = total / max(count, 1)
        return (loss, None) if math.isfinite(loss) else (None, "the checkpoint loss is not finite")

    def answer(self, header: dict[str, Any]) -> dict[str, Any]:
        """The worker's ``checkpoint`` frame: measure, decide, and say whether to stop."""
        from training.early_stop import DEFAULT_SPREADS, decide, reference
        from training.harness import WorkerFailed

        if self.step is None or header.get("step") != self.step:
            raise WorkerFailed("protocol", f"a checkpoint at step {header.get('step')!r}; the harness expects "
                                           f"{self.step!r}")
        loss, problem = self._loss()
        self.measured = {"step": self.step, "loss": None if loss is None else round(loss, 6),
                         "batches": self.scale.val_batches, "split": "train", "computed_by": "harness"}
        if problem:
            self.measured["problem"] = problem
        es = self.payload.get("early_stop")
        if not isinstance(es, dict):
            return {"stop": False}
        spreads = es.get("spreads", DEFAULT_SPREADS)
        spreads = float(spreads) if isinstance(spreads, (int, float)) and math.isfinite(spreads) else DEFAULT_SPREADS
        ref = reference(self.payload.get("baseline"), self.step, self.scale.val_batches, self.scale.name)
        self.decision = decide(loss, ref, spreads, self.step, self.scale.lm_steps)
        print(f"[early stop] {self.decision.text}", flush=True)
        return {"stop": self.decision.stop, "reason": self.decision.text}

    def apply(self, metrics: dict[str, Any]) -> str | None:
        """Put the harness's checkpoint and verdict into ``metrics``; returns a problem (the run
        stopped early, or skipped the checkpoint) or None."""
        from training.early_stop import STOPPED_EARLY

        said = metrics.get("checkpoint")
        metrics["checkpoint"] = self.measured
        metrics["early_stop"] = self.decision.to_dict() if self.decision is not None else None
        if self.measured is not None and isinstance(said, dict) and isinstance(said.get("loss"), (int, float)):
            self.measured["worker_loss"] = float(said["loss"])
        if self.decision is not None and self.decision.stop:
            metrics.update(status=STOPPED_EARLY, stop_reason=self.decision.text, error=None, val_loss=None,
                           val_bpb=None, partial=True)
            return self.decision.text
        if metrics.get("status") == STOPPED_EARLY:
            metrics.update(status="error", error="the worker stopped at the checkpoint without the harness's verdict")
            return metrics["error"]
        if self.step is not None and self.measured is None and metrics.get("status") == "ok":
            metrics.update(status="error", error="the worker skipped the half-way checkpoint of the language model")
            return metrics["error"]
        return None


def _evaluate_in_worker(request: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The evaluate task: the worker trains and evaluates the candidate (``training.evaluate``)
    and reports the metrics over the socketpair; the harness bounds them, recomputes the probe
    accuracies and the validation loss itself from the trained models' logits (and spot-checks
    their causality; :func:`_verify_metrics`), adds the worker's CPU seconds and peak memory read
    from /proc, and alone writes the result to the parent. (Training itself runs in the worker;
    its loss curve is the worker's word: see the README's threat model.)"""
    from training.harness import WorkerClient, WorkerFailed

    payload = request["payload"]
    mem_reason = f"exceeded {float(request['limits']['address_space_gib']):g} GiB address space"

    def progress(fraction: float, message: str) -> None:
        emit({"event": "progress", "fraction": fraction, "message": message})

    checkpoint = HalfwayCheckpoint(payload)
    with WorkerClient(request) as client:
        checkpoint.client = client
        try:
            vals, _ = client.call("evaluate", {"payload": payload, "static": bool(payload.get("static_check", True)),
                                               "checkpoint": checkpoint.step is not None},
                                  n_out=0, on_progress=progress, on_checkpoint=checkpoint.answer)
        except WorkerFailed as exc:
            return {"ok": False, "reason": mem_reason if exc.kind == "memory" else exc.reason,
                    "worker_cpu_s": round(client.cpu_seconds(), 3)}
        result = _json_safe(vals.get("result"))
        if not isinstance(result, dict):
            return {"ok": False, "reason": "the worker returned no evaluation result",
                    "worker_cpu_s": round(client.cpu_seconds(), 3)}
        metrics = result.get("metrics")
        status = metrics.get("status") if isinstance(metrics, dict) else None
        ok = result.get("ok") is True and status == "ok"
        reason = None if ok else str(result.get("reason") or f"evaluation {status or 'failed'}")[:500]
        verified: dict[str, Any] = {}
        if isinstance(metrics, dict):
            kept = [str(k) for k in (vals.get("kept") or []) if isinstance(k, str)]
            try:
                problem, verified = _verify_metrics(client, payload, metrics, kept)
            except WorkerFailed as exc:
                problem = f"the harness could not verify the metrics: {exc.reason}"
            if problem:
                ok, reason = False, problem
            problem = checkpoint.apply(metrics)
            if problem:
                ok, reason = False, problem
            # the task scores are the harness's alone: whatever the worker put there is dropped
            metrics["lm_eval"], metrics["benchmark"] = None, None
            cpu_before_lm_eval = client.cpu_seconds()
            if ok:
                problem = _harness_lm_eval(client, payload, metrics, kept, verified)
                if problem:
                    ok, reason = False, problem
                    metrics["status"], metrics["error"] = "error", problem
            from training.evaluate import is_partial

            metrics["partial"] = is_partial(metrics)
        cpu = client.cpu_seconds()
        memory = client.memory_mib()
        said = metrics.get("cpu_seconds") if isinstance(metrics, dict) else None
        # (the worker's CPU time for the harness's lm-eval requests comes after its report)
        cpu_reported_part = cpu_before_lm_eval if isinstance(metrics, dict) else cpu
        # the efficiency guard's basis is the worker's CPU time, which the harness reads from
        # /proc: a report far below it (start-up and verification aside) is a lie
        if isinstance(said, (int, float)) and cpu_reported_part > float(said) + CPU_SLACK_S + 0.1 * cpu_reported_part \
                and ok:
            ok, reason = False, (f"the worker reported {float(said):.1f} CPU seconds; the harness measured "
                                 f"{cpu_reported_part:.1f} s of the worker's CPU time")
    out: dict[str, Any] = {"ok": ok, "reason": reason, "worker_cpu_s": round(cpu, 3), "worker_memory_mib": memory,
                           "verified": verified}
    if isinstance(metrics, dict):
        out["metrics"] = metrics
    return out


def scale_from_spec(spec: Any) -> Any:
    """A ``training.scales.Scale`` from a payload's scale: a name, or a Scale turned into a dict
    by ``dataclasses.asdict`` and JSON (nested probe specs and tuples are rebuilt)."""
    import dataclasses

    from training.probes import ProbeSpec
    from training.scales import Scale, get_scale

    if not isinstance(spec, dict):
        return get_scale(spec)
    names = {f.name for f in dataclasses.fields(Scale)}
    fields = {k: v for k, v in spec.items() if k in names}

    def pairs(v: Any) -> tuple:
        return tuple(tuple(p) if isinstance(p, list) else p for p in (v or ()))

    if "probes" in fields:
        fields["probes"] = tuple(
            ProbeSpec(**{**p, "params": pairs(p.get("params"))}) if isinstance(p, dict) else p
            for p in fields["probes"] or ())
    for key in ("extra", "lm_eval_metrics"):
        if key in fields:
            fields[key] = pairs(fields[key])
    if "lm_eval_tasks" in fields:
        fields["lm_eval_tasks"] = tuple(fields["lm_eval_tasks"] or ())
    return Scale(**fields)


def payload_scale(payload: dict[str, Any]) -> Any:
    """The ``Scale`` an evaluate payload names (``scale``, optional ``scale_factor`` and
    ``scale_overrides``), the same in the harness and in the worker."""
    from training.scales import get_scale, scaled_down

    scale: Any = scale_from_spec(payload.get("scale", "explore"))
    if payload.get("scale_factor") is not None or payload.get("scale_overrides"):
        return scaled_down(scale, float(payload.get("scale_factor") or 1.0), **(payload.get("scale_overrides") or {}))
    return get_scale(scale)


def _evaluate(payload: dict[str, Any], guard: Guard, watch: MutationWatch,
              emit: Callable[[dict[str, Any]], None], static: bool, keep_model: Any = None,
              checkpoint: Any = None) -> dict[str, Any]:
    """Evaluate the candidate with ``training.evaluate`` (the class loaded under the guard).

    Payload: ``path``, ``scale`` (a name), optional ``scale_factor`` and ``scale_overrides``
    (a cheaper copy via ``training.scales.scaled_down``, for tests and smoke runs), ``seed``,
    ``baseline``, ``guards`` (``training.guards.Guards`` as a dict; default: derived from the
    baseline), ``kwargs`` (passed on, e.g. ``mixer_kwargs``). Log lines go to stdout (streamed
    by the parent); progress calls become ``{"event": "progress", "fraction", "message"}``.
    ``checkpoint``: the worker's channel to the harness at the LM run's half-way checkpoint
    (``training.evaluate.evaluate_class``'s ``checkpoint``)."""
    import training.evaluate as ev
    from training.scales import get_scale, scaled_down

    path = payload["path"]
    scale: Any = scale_from_spec(payload.get("scale", "explore"))
    if payload.get("scale_factor") is not None or payload.get("scale_overrides"):
        scale = scaled_down(scale, float(payload.get("scale_factor") or 1.0), **(payload.get("scale_overrides") or {}))
    else:
        scale = get_scale(scale)
    seed = int(payload.get("seed", 0))
    cls = load_candidate(path, guard, static=static)

    def on_log(line: str) -> None:
        print(line, flush=True)

    def progress(fraction: float, message: str = "") -> None:
        emit({"event": "progress", "fraction": float(fraction), "message": str(message)})

    kwargs = dict(payload.get("kwargs") or {})
    kwargs.pop("lm_eval", None)
    kwargs.pop("lm_eval_allow_hub", None)
    kwargs.pop("checkpoint", None)
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    if keep_model is not None:
        kwargs["keep_model"] = keep_model
        # the harness scores the lm-eval tasks itself from the trained model's logits
        kwargs["lm_eval"] = "deferred"
    if payload.get("guards") is not None:
        kwargs["guards"] = payload["guards"]
    if hasattr(ev, "evaluate_class"):
        metrics = ev.evaluate_class(cls, scale, seed, on_log=on_log, baseline=payload.get("baseline"),
                                    progress=progress, **kwargs)
    else:  # older evaluator: make its loader return the guarded class
        import training.loader as loader

        loader.load_mixer_class = lambda *a, **k: cls  # type: ignore[assignment]
        metrics = ev.evaluate_file(path, scale=scale, seed=seed, on_log=on_log, baseline=payload.get("baseline"),
                                   progress=progress, **kwargs)
    changed = watch.changes()
    if changed:
        return {"ok": False, "reason": f"candidate modified {', '.join(changed[:5])} (monkeypatching is not allowed)"}
    if guard.violations:
        return {"ok": False, "reason": guard.violations[0], "metrics": metrics}
    status = metrics.get("status", "ok") if isinstance(metrics, dict) else "error"
    if status == "ok":
        return {"ok": True, "reason": None, "metrics": metrics}
    why = metrics.get("stop_reason") or metrics.get("error") or f"evaluation {status}"
    return {"ok": False, "reason": str(why).strip().splitlines()[0][:500] if why else f"evaluation {status}",
            "metrics": metrics}


def _vm_peak_mib() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmPeak:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when the process that started it dies (Linux
    ``PR_SET_PDEATHSIG``), so that a console or loop killed mid-run leaves no evaluation running,
    and make it non-dumpable (``PR_SET_DUMPABLE`` 0: its memory and descriptors are out of reach
    of processes without capabilities, such as the worker).
    Done before the guard is installed (it refuses ctypes to candidate code)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        # PR_SET_DUMPABLE 0: without capabilities, no process (the worker included) may open this
        # harness's /proc/<pid>/mem or /proc/<pid>/fd/* (the result channel) or ptrace it
        libc.prctl(4, 0)
    except (OSError, AttributeError):
        return
    # the parent died before the request was even read (outside a PID namespace, where the
    # parent is bwrap's init with pid 1 and bwrap's own --die-with-parent covers this)
    if os.getppid() == 1 and "--pidns" not in sys.argv:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child."""
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m training.sandbox_child")
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--request", default=None, help="request JSON file (default: stdin)")
    parser.add_argument("--pidns", action="store_true", help="running as the init child of a PID namespace (bwrap)")
    args = parser.parse_args(argv)
    channel = ResultChannel(args.result_fd)
    try:
        text = Path(args.request).read_text() if args.request else sys.stdin.read()
        request = json.loads(text)
        limits = request["limits"]
        mem_reason = f"exceeded {float(limits['address_space_gib']):g} GiB address space"
        apply_limits(limits)
        os.chdir(request["run_dir"])
    except Exception as exc:
        channel.send({"event": "result", "ok": False, "reason": f"bad sandbox request: {exc}"})
        return 2
    try:
        result = run_task(request, channel)
    except MemoryError:
        result = {"ok": False, "reason": mem_reason}
    except CandidateError as exc:
        result = {"ok": False, "reason": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - everything becomes a reason
        if _memory_message(exc):
            result = {"ok": False, "reason": mem_reason}
        else:
            tb = traceback.format_exc(limit=8)
            print(tb, file=sys.stderr, flush=True)
            result = {"ok": False, "reason": f"{type(exc).__name__}: {str(exc)[:500]}"}
    result.setdefault("vm_peak_mib", _vm_peak_mib())
    try:
        channel.send({"event": "result", **result})
    except MemoryError:
        channel.send({"event": "result", "ok": False, "reason": mem_reason})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
