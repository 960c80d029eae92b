"""The sandbox worker: the only process that runs candidate code.

The trusted harness (:mod:`training.sandbox_child`) forks it before any candidate code exists.
:func:`serve` then, in this order: closes every file descriptor but its end of the socketpair and
stdout/stderr (so the result channel to the parent is out of reach), caps its open files, installs
a seccomp filter (:func:`install_seccomp`: no execve, no new processes, no sockets but AF_UNIX,
no ptrace/mount/setns/unshare/bpf/perf_event_open/keyctl...), warms torch up, installs the
diagnostic audit-hook guard and the monkeypatch watch, and answers the harness's commands over
the socketpair (:mod:`training.wire` frames, nothing pickled):

- ``build`` {path, d_model, n_heads, seed, static} -> values {params}: loads the candidate (static
  check first) and builds ``Mixer(d_model, n_heads)`` under ``torch.manual_seed(seed)``;
- ``forward`` {mode, seed, backward, param_grads} + [x, (g)] -> [y, (x.grad), (param grads)]: one
  forward (with ``torch.manual_seed(seed)`` first, so that dropout repeats), optionally a backward
  of ``(y * g).sum()``;
- ``timed`` {reps} + [x, g] -> nothing: ``reps`` forward+backward passes (the harness times them
  from outside);
- ``saved_bytes`` + [x, g] -> values {saved_bytes}: the activation memory autograd keeps;
- ``forward_many`` {groups: [[{mode, grad, seed}...]...]} + [stacked x per group] -> [stacked y
  per group] (inputs of one shape stacked, the wire carries few tensors): one forward per input, each
  in its mode (``torch.nn.Module.train``) with autograd on or off (``grad``; with grad on, the
  input requires grad, as an embedding output does) and the RNG reseeded (one round trip for a
  whole batch of causality configurations);
- ``redraw`` {seed, scale} -> values {n_tensors}: adds seeded Gaussian noise of
  ``scale * (rms + 0.2)`` to every parameter (zero-initialised ones included), so that a
  parameter that is inert at initialisation (a zero gate) is not inert in the check;
- ``trace`` {lengths} + [x, g per length] -> values {traces}: per length, the set of aten ops a
  forward+backward runs and its matmul/attention FLOPs (a ``TorchDispatchMode`` records them);
- ``evaluate`` {payload, static} -> values {result, kept}: the whole evaluation, keeping each
  trained model (probe labels, ``lm``) for the harness;
- ``logits`` {label} + [tokens] -> [logits]: a trained model run as the scored forwards run it;
- ``select_trained`` {label, layer} -> values {n_layers}: the check ops act on that trained
  mixer (its trained state restored on every selection after the first);
- ``status`` -> values {violations, changes}: what the diagnostic guard and the watch saw;
- ``evaluate`` {payload, static, checkpoint} -> values {result, kept}: the whole evaluation;
  with ``checkpoint``, at the LM run's half-way checkpoint the worker sends a ``{"event":
  "checkpoint", "step"}`` frame, answers ``logits`` requests on the half-trained model (label
  ``lm_checkpoint``) and goes on when the harness sends ``resume`` {stop, reason}: a stop ends
  the run as ``stopped_early`` (the harness decides; ``training.early_stop``);
- ``logits`` {label} + [tokens] -> [logits]: a trained model's logits, in eval mode;
- ``quit``.

Everything the worker says is untrusted: the harness computes each verdict from the tensors.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import sys
import traceback
from typing import Any, Callable

import torch

from training import wire
from training.op_trace import OpTrace

#: Syscalls the worker may never make (EPERM).
DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork", "ptrace", "mount", "umount2", "pivot_root", "chroot",
    "setns", "unshare", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "userfaultfd", "io_uring_setup", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "personality", "mknod", "mknodat",
)
CLONE_THREAD = 0x00010000
#: the label of the half-trained language model the harness reads at the checkpoint
CHECKPOINT_LABEL = "lm_checkpoint"


def install_seccomp() -> str | None:
    """Install the worker's seccomp filter on this process (irreversible; inherited by threads).
    Returns None on success, else why not (no libseccomp binding)."""
    try:
        import pyseccomp as sc
    except Exception as exc:  # noqa: BLE001 - reported, the OS sandbox still holds
        return f"pyseccomp unavailable: {exc}"
    f = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(deny, name)
        except Exception:  # noqa: BLE001 - a syscall this architecture lacks
            pass
    # threads only: clone without CLONE_THREAD (a new process) is refused; clone3 hides its
    # flags in memory, so it reports ENOSYS and the C library falls back to clone
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    noaf = sc.ERRNO(errno.EAFNOSUPPORT)
    f.add_rule(noaf, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    f.add_rule(noaf, "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
    f.load()
    return None


def _close_fds(keep: set[int]) -> None:
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    keep = keep | {0, 1, 2}
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
        except ValueError:
            continue
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _warm_up() -> None:
    x = torch.randn(2, 8, 4, requires_grad=True)
    (torch.nn.functional.softmax(x @ x.transpose(1, 2), -1) @ x).sum().backward()


def _walk_parameters(module: Any) -> list:
    from training.causal import walk_parameters

    return walk_parameters(module)


class Worker:
    """The worker's state: the candidate class, the built model, the guard and the watch."""

    def __init__(self, sock: socket.socket, guard: Any, watch: Any) -> None:
        self.sock = sock
        self.guard = guard
        self.watch = watch
        self.cls: type | None = None
        self.model: Any = None
        self.trained: dict[str, Any] = {}  # label -> model trained by the evaluate op
        self._trained_state: dict[tuple, dict] = {}  # (label, layer) -> a trained mixer's saved state

    # ------------------------------------------------------------------ ops
    def op_build(self, args: dict, tensors: list) -> tuple[dict, list]:
        from training.sandbox_guard import load_candidate

        if self.cls is None:
            self.cls = load_candidate(str(args["path"]), self.guard, static=bool(args.get("static", True)))
        torch.manual_seed(int(args.get("seed", 0)))
        m = self.cls(d_model=int(args["d_model"]), n_heads=int(args["n_heads"]))
        if not isinstance(m, torch.nn.Module):
            raise TypeError("Mixer(...) did not return an nn.Module")
        self.model = m
        params = _walk_parameters(m)
        return {"params": int(sum(p.numel() for p in params)), "n_tensors": len(params)}, []

    def _model(self) -> Any:
        if self.model is None:
            raise RuntimeError("no model built")
        return self.model

    def op_forward(self, args: dict, tensors: list) -> tuple[dict, list]:
        m = self._model()
        torch.nn.Module.train(m, args.get("mode", "train") == "train")
        backward = bool(args.get("backward", False))
        x = tensors[0].clone()
        if backward:
            x.requires_grad_(True)
        if args.get("seed") is not None:
            torch.manual_seed(int(args["seed"]))
        if backward:
            y = m(x)
        else:
            with torch.no_grad():
                y = m(x)
        if type(y) is not torch.Tensor:  # noqa: E721 - a subclass could lie
            raise TypeError(f"forward must return a plain torch.Tensor, not {type(y).__name__}")
        out = [y.detach()]
        values: dict[str, Any] = {"requires_grad": bool(y.requires_grad)}
        if backward and tuple(y.shape) != tuple(x.shape):  # the harness reports the shape
            out += [torch.zeros(0)] + ([torch.zeros(0)] if args.get("param_grads") else [])
            return values, out
        if backward:
            if not y.requires_grad:
                raise RuntimeError("the output does not require grad (no backward path)")
            g = tensors[1]
            torch.Tensor.backward(torch.sum(y * g))
            out.append(x.grad.detach() if x.grad is not None else torch.zeros(0))
            if args.get("param_grads"):
                params = _walk_parameters(m)
                present = [p.grad is not None for p in params]
                flat = [p.grad.detach().reshape(-1).float() for p in params if p.grad is not None]
                out.append(torch.cat(flat) if flat else torch.zeros(0))
                values["grad_present"] = present
                values["n_params"] = len(params)
                for p in params:
                    p.grad = None
        return values, out

    def op_forward_many(self, args: dict, tensors: list) -> tuple[dict, list]:
        from training.sandbox_guard import SandboxViolation

        m = self._model()
        groups = list(args.get("groups") or [])
        if len(groups) != len(tensors):
            raise ValueError("forward_many needs one item list per stacked tensor")
        out = []
        for items, xs in zip(groups, tensors):
            if len(items) != xs.shape[0]:
                raise ValueError("forward_many needs one item per stacked input")
            ys = []
            for item, x in zip(items, xs):
                mode = "train" if item.get("mode", "train") == "train" else "eval"
                grad = bool(item.get("grad", False))
                at = f"L={int(x.shape[1]) if x.dim() > 1 else '?'}, batch {int(x.shape[0]) if x.dim() else '?'}, " \
                     f"{mode} mode, grad {'on' if grad else 'off'}"
                torch.nn.Module.train(m, mode == "train")
                x = x.clone()
                if item.get("seed") is not None:
                    torch.manual_seed(int(item["seed"]))
                try:
                    with torch.set_grad_enabled(grad):
                        if grad:
                            x.requires_grad_(True)
                        y = m(x)
                except (MemoryError, SandboxViolation):
                    raise
                except Exception as exc:  # noqa: BLE001 - name the configuration that raised
                    try:
                        exc.args = (f"{exc} (at {at})",)
                    except Exception:  # noqa: BLE001 - an exception type that refuses new args
                        raise RuntimeError(f"{type(exc).__name__}: {exc} (at {at})") from exc
                    raise
                if type(y) is not torch.Tensor:  # noqa: E721 - a subclass could lie
                    raise TypeError(f"forward must return a plain torch.Tensor, not {type(y).__name__} (at {at})")
                if tuple(y.shape) != tuple(x.shape):
                    raise ValueError(f"forward returned {tuple(y.shape)} for input {tuple(x.shape)} (at {at})")
                ys.append(y.detach())
            out.append(torch.stack(ys))
        return {}, out

    def op_redraw(self, args: dict, tensors: list) -> tuple[dict, list]:
        m = self._model()
        gen = torch.Generator().manual_seed(int(args.get("seed", 0)))
        scale = float(args.get("scale", 0.5))
        params = _walk_parameters(m)
        with torch.no_grad():
            for p in params:
                if not p.is_floating_point():
                    continue
                rms = float(p.detach().double().pow(2).mean().sqrt()) if p.numel() else 0.0
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
                p.add_(noise * (scale * (rms + 0.2)))
        return {"n_tensors": len(params)}, []

    def op_trace(self, args: dict, tensors: list) -> tuple[dict, list]:
        m = self._model()
        torch.nn.Module.train(m, True)
        traces = []
        for i in range(len(tensors) // 2):
            x, g = tensors[2 * i].clone().requires_grad_(True), tensors[2 * i + 1]
            rec = OpTrace()
            with rec:
                y = m(x)
                torch.Tensor.backward(y, g)
            traces.append(rec.summary())
        return {"traces": traces}, []

    def op_timed(self, args: dict, tensors: list) -> tuple[dict, list]:
        m = self._model()
        torch.nn.Module.train(m, True)
        x, g = tensors[0], tensors[1]
        for _ in range(max(1, min(64, int(args.get("reps", 1))))):
            xi = x.clone().requires_grad_(True)
            y = m(xi)
            torch.Tensor.backward(y, g)
        return {}, []

    def op_saved_bytes(self, args: dict, tensors: list) -> tuple[dict, list]:
        m = self._model()
        torch.nn.Module.train(m, True)
        param_ptrs = {p.data_ptr() for p in _walk_parameters(m)}
        seen: dict[int, int] = {}

        def pack(t: Any) -> Any:
            try:
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if ptr not in param_ptrs:
                    seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
            except Exception:  # noqa: BLE001 - exotic tensors have no storage
                pass
            return t

        x = tensors[0].clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = m(x)
        torch.Tensor.backward(y, tensors[1])
        return {"saved_bytes": int(sum(seen.values()))}, []

    def op_evaluate(self, args: dict, tensors: list) -> tuple[dict, list]:
        """The whole evaluation (``training.evaluate``) of the candidate in this process; progress
        goes to the harness as ``{"event": "progress"}`` frames before the reply. The metrics
        are the worker's word (the harness bounds and sanity-checks them)."""

        def emit(msg: dict[str, Any]) -> None:
            if msg.get("event") == "progress":
                wire.send(self.sock, {"event": "progress", "fraction": float(msg.get("fraction") or 0.0),
                                      "message": str(msg.get("message", ""))[:200]})

        def checkpoint(step: int, model: Any) -> str | None:
            self.trained[CHECKPOINT_LABEL] = model
            try:
                wire.send(self.sock, {"event": "checkpoint", "step": int(step)})
                return self._serve_checkpoint()
            finally:
                self.trained.pop(CHECKPOINT_LABEL, None)

        result = run_evaluation(dict(args.get("payload") or {}), self.guard, self.watch, emit,
                                bool(args.get("static", True)), keep_model=self.trained.__setitem__,
                                checkpoint=checkpoint if args.get("checkpoint") else None)
        return {"result": result, "kept": sorted(self.trained)}, []

    def _serve_checkpoint(self) -> str | None:
        """At the half-way checkpoint: answer the harness's ``logits`` requests until it sends
        ``resume``; returns its reason to stop (None: go on)."""
        while True:
            header, tensors = wire.recv(self.sock)
            op = header.get("op")
            if op == "resume":
                args = header.get("args") or {}
                return str(args.get("reason") or "stopped at the half-way checkpoint") if args.get("stop") else None
            if op == "quit":
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
            self._answer("logits" if op == "logits" else f"{op} (not at a checkpoint)",
                         header.get("args") or {}, tensors)

    def op_logits(self, args: dict, tensors: list) -> tuple[dict, list]:
        """Logits of a trained model (``label``) for the harness's token batch, computed exactly as
        the scored forwards compute them (``probes.accuracy``, ``trainer.evaluate_loss``): eval
        mode, autograd off, on the model's device under the trainer's autocast (bf16 on CUDA,
        none on CPU); returned as fp32 on the CPU."""
        from training.trainer import autocast_context

        m = self.trained.get(str(args.get("label")))
        if m is None:
            raise KeyError(f"no trained model {args.get('label')!r}")
        torch.nn.Module.train(m, False)
        params = _walk_parameters(m)
        device = params[0].device if params else torch.device("cpu")
        with torch.no_grad(), autocast_context(device):
            y = m(tensors[0].clone().to(device))
        if type(y) is not torch.Tensor:  # noqa: E721
            raise TypeError("the model must return a plain torch.Tensor")
        dtype = "bfloat16 autocast" if device.type == "cuda" else str(y.dtype).removeprefix("torch.")
        return {"dtype": dtype, "device": device.type}, [y.detach().float().cpu()]

    def op_select_trained(self, args: dict, tensors: list) -> tuple[dict, list]:
        """Make the mixer of layer ``layer`` of the trained model ``label`` the model the check ops
        (``forward``, ``forward_many``, ``redraw``) act on, as trained: its parameters and buffers
        are saved on the first selection and restored on every later one (after a ``redraw``)."""
        m = self.trained.get(str(args.get("label")))
        if m is None:
            raise KeyError(f"no trained model {args.get('label')!r}")
        layers = getattr(m, "layers", None)
        i = int(args.get("layer", 0))
        if layers is None or not 0 <= i < len(layers):
            raise IndexError(f"the trained {args.get('label')!r} model has no layer {i}")
        mixer = layers[i].mixer
        key = (str(args.get("label")), i)
        saved = self._trained_state.get(key)
        if saved is None:
            self._trained_state[key] = {k: v.detach().clone() for k, v in mixer.state_dict().items()}
        else:
            mixer.load_state_dict(saved)
        self.model = mixer
        return {"n_layers": len(layers)}, []

    def op_status(self, args: dict, tensors: list) -> tuple[dict, list]:
        return {"violations": list(self.guard.violations[:10]), "changes": list(self.watch.changes()[:10])}, []

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        """Answer commands until ``quit`` or until the harness goes away."""
        while True:
            try:
                header, tensors = wire.recv(self.sock)
            except (wire.WireError, OSError):
                return
            op = header.get("op")
            if op == "quit":
                return
            if not self._answer(op, header.get("args") or {}, tensors):
                return

    def _answer(self, op: Any, args: dict, tensors: list) -> bool:
        """Run one command and send its reply; False when no reply could be sent."""
        from training.sandbox_guard import SandboxViolation
        from training.sandbox_guard import memory_message as _memory_message

        ops = {"build": self.op_build, "forward": self.op_forward, "timed": self.op_timed,
               "saved_bytes": self.op_saved_bytes, "forward_many": self.op_forward_many,
               "redraw": self.op_redraw, "trace": self.op_trace, "status": self.op_status, "evaluate": self.op_evaluate,
               "logits": self.op_logits, "select_trained": self.op_select_trained}
        fn = ops.get(op)
        try:
            if fn is None:
                raise ValueError(f"unknown op {op!r}")
            values, out = fn(args, tensors)
            reply: dict[str, Any] = {"ok": True, "values": values}
        except BaseException as exc:  # noqa: BLE001 - candidate code may raise anything
            out = []
            try:
                text = str(exc)
            except BaseException:  # noqa: BLE001
                text = "<unprintable>"
            memory = isinstance(exc, MemoryError) or _memory_message(exc)
            kind = "violation" if isinstance(exc, SandboxViolation) else ("memory" if memory else "error")
            reply = {"ok": False, "kind": kind, "error": f"{type(exc).__name__}: {text[:300]}"
                     if kind == "error" else text[:300]}
            if kind == "error":
                print(traceback.format_exc(limit=6), file=sys.stderr, flush=True)
        try:
            wire.send(self.sock, reply, out)
        except (wire.WireError, OSError, MemoryError):
            try:
                wire.send(self.sock, {"ok": False, "kind": "error", "error": "could not send the reply"})
            except (wire.WireError, OSError):
                return False
        return True


def run_evaluation(payload: dict[str, Any], guard: Any, watch: Any,
                   emit: Callable[[dict[str, Any]], None], static: bool, keep_model: Any = None,
                   checkpoint: Any = None) -> dict[str, Any]:
    """The evaluate op's body, in the worker: evaluate the candidate with ``training.evaluate``
    (the class loaded under the guard).

    Payload: ``path``, ``scale`` (a name), optional ``scale_factor`` and ``scale_overrides``
    (a cheaper copy via ``training.scales.scaled_down``, for tests and smoke runs), ``seed``,
    ``baseline``, ``guards`` (``training.guards.Guards`` as a dict; default: derived from the
    baseline), ``kwargs`` (passed on, e.g. ``mixer_kwargs``). Log lines go to stdout (streamed
    by the parent); progress calls become ``{"event": "progress", "fraction", "message"}``.
    ``checkpoint``: the worker's channel to the harness at the LM run's half-way checkpoint
    (``training.evaluate.evaluate_class``'s ``checkpoint``)."""
    import training.evaluate as ev
    from training.sandbox_guard import load_candidate
    from training.scales import payload_scale

    path = payload["path"]
    scale = payload_scale(payload)
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
    metrics = ev.evaluate_class(cls, scale, seed, on_log=on_log, baseline=payload.get("baseline"),
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


def serve(sock: socket.socket, request: dict[str, Any]) -> None:
    """The body of the forked worker (never returns: exits the process)."""
    code = 0
    try:
        _close_fds({sock.fileno()})
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True)
            except (AttributeError, ValueError):
                pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        cap = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (cap, cap))
        # the CPU limit is the worker's own (the harness above it has a start-up allowance more);
        # soft -> SIGXCPU (the harness names the check that was running), hard a little later
        cpu = max(1, int(float(request.get("limits", {}).get("cpu_s", 240))))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        threads = max(1, int(request.get("limits", {}).get("threads", 1)))
        torch.set_num_threads(threads)
        why = install_seccomp()
        if why and request.get("isolation") == "bwrap":
            print(f"[sandbox] worker without seccomp filter: {why}", file=sys.stderr, flush=True)
        _warm_up()
        from training.sandbox_guard import Guard, default_watch, read_roots

        payload = request.get("payload") or {}
        extra = list(payload.get("read_roots", []))
        if payload.get("path"):
            extra.append(os.path.dirname(str(payload["path"])))
        guard = Guard(request["run_dir"], read_roots(request.get("project_root", ""), extra))
        watch = default_watch()
        guard.install()
        guard.active = True
        Worker(sock, guard, watch).serve()
    except BaseException:  # noqa: BLE001
        traceback.print_exc(limit=6)
        code = 3
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)
