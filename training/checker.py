"""The checker: is a candidate mixer file well-formed, safe, causal and sub-quadratic? Measured, not
asked.

:func:`check_file` runs the static checks (1-2) in the calling process - they only parse - and, if
they pass, the dynamic checks (3-7) inside the sandbox child (:mod:`training.sandbox`), where
:func:`run_dynamic_checks` executes them. Every check has a name, a pass/fail, a measured value
and a one-line reason:

1. ``contract``: parses; defines ``class Mixer(nn.Module)`` with ``__init__(self, d_model,
   n_heads, **kwargs)`` and ``forward(self, x)``;
2. ``imports``: imports and constructs within the allow-list (:mod:`training.static_check`);
3. ``build``: builds at the scale's width and heads; parameter count within the scale's budget
   (counted by walking the module tree ourselves, not by calling the candidate's methods);
4. ``forward_backward``: forward and backward on a tiny batch: output is a plain tensor of the
   input's shape, outputs and gradients finite, the output depends on the input;
5. ``causality``: in the configurations that produce the metrics (:func:`scored_configs`: each
   probe's training batch and held-out evaluation batch, the LM's batch, read from the scale,
   plus L=77 batch 2 and a longer unscored length), on token inputs through an embedding and the
   pre-norm (real probe sequences, or random tokens with repeats), with the parameters as
   initialised and re-drawn (every parameter perturbed, zero-initialised ones included), in
   train and eval mode, with autograd on and off: replacing every token from a random position t
   on changes no output before t beyond 1e-5 (one ``forward_many`` round trip per parameter
   state). Also on Gaussian inputs at the scale's length and L=77 (suffix and single-token
   changes), a gradient test (d out[:t] / d x[t:] = 0) and batch independence. A failure names
   the length, batch, mode, grad, parameter state, setting and position (``details["failing"]``
   lists up to 8 failing configurations);
6. ``subquadratic``: time of forward+backward at L, 2L, 4L (512, 1024, 2048; batch 1),
   interleaved rounds, medians, slope of log time on log L (the larger of the least-squares fit
   and the slope between the two longest lengths, see ``_time_exponent``); the activation
   memory autograd keeps for backward at each length (bytes of the tensors saved through
   ``torch.autograd.graph.saved_tensors_hooks``, unique storages, parameters excluded), which is
   exact and immune to timer noise; and an operator trace (:class:`training.op_trace.OpTrace`)
   from the smallest scored length up to 2048 (:func:`trace_lengths`, ``TRACE_LONGEST``; it covers
   the timed lengths): lengths that run the same
   set of aten ops form a code path, and each path's FLOP, memory and memory-traffic exponents
   (traffic: bytes written by the ops that allocate their output, which catches a backward that
   materialises a full-length tensor per step, e.g. ``a[:, t]`` in a Python loop) are fitted on
   its own (:func:`code_paths`; ``details["paths"]``), so that softmax attention at the scored
   lengths behind a linear mixer at the long ones fails, naming the path change. The worker's
   trace is cross-checked against the harness's timings over the timed lengths
   (:func:`time_vs_counts`): a time exponent more than ``TIME_COUNT_GAP`` above the counted
   FLOP/traffic exponent fails (a trace that reports a linear cost while the timed cost grows
   super-linearly; honest counts grow at least linearly, so this never fails a design the time
   rule passes). All exponents
   must be <= 1.35. A time slope near the threshold triggers more rounds. (Why saved tensors: tracemalloc
   does not see torch's allocator, ru_maxrss
   is monotonic within a process, and the CPU profiler's memory events proved unreliable here;
   activation memory is what grows with L in training, and a pure-PyTorch quadratic design keeps
   its L x L scores for backward. A fused kernel that keeps no L x L tensor still fails on time
   and on its counted FLOPs.)
7. ``determinism``: building and running twice under the same seed gives identical outputs and
   gradients.

Every failure names the configuration it was found in (length, batch, mode, grad, parameter
state, position where there is one); a forward that raises is named by the call in flight
(``_Stage.where``, and the worker's ``forward_many`` names the item that raised).

A check that could not run because an earlier one failed is reported as failed with the reason
"not run: ...". The dynamic checks also fail on any sandbox violation (even one the candidate
caught) and on monkeypatching of torch/einops/math/training.ops.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from training.causal import CAUSALITY_TOL, causality_check, forward_fns, max_abs, scale_config, scored_configs  # noqa: F401
from training.causal import walk_parameters as _walk_parameters  # noqa: F401
from training.static_check import static_check

#: the sandbox's view of a scale (kept under its old name for callers)
_scale_config = scale_config

CHECK_NAMES = ("contract", "imports", "build", "forward_backward", "causality", "subquadratic", "determinism")
EXPONENT_MAX = 1.35
DEFAULT_LENGTHS = (512, 1024, 2048)
#: the op trace runs from the smallest scored length up to this one (it covers the timed lengths)
TRACE_LONGEST = 2048
#: how far the harness's time exponent may exceed the exponent of the worker's counted cost (FLOPs
#: or memory traffic, the larger) over the same lengths before the trace is called false; timing
#: is noisy (a fixed per-call cost flattens it, a busy machine bends it), the counts are exact,
#: so only a gross mismatch fails
TIME_COUNT_GAP = 0.5
#: the configuration of the cost measurements, named by their failures
COST_CONFIG = "Gaussian inputs, batch 1, train mode, forward+backward, params as-initialised"


@dataclass
class CheckResult:
    """One check: its name, pass/fail, a measured value and a one-line reason."""

    name: str
    passed: bool
    value: Any
    reason: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


@dataclass
class CheckReport:
    """The verdict on one candidate file: ``passed`` only when every check passed."""

    passed: bool
    checks: list[CheckResult]
    scale: str = "probe"
    isolation: str | None = None
    duration_s: float = 0.0
    sandbox_reason: str | None = None
    log_path: str | None = None

    def to_dict(self) -> dict:
        """JSON-able form (the CLI's ``--json``)."""
        return {"passed": self.passed, "scale": self.scale, "isolation": self.isolation,
                "duration_s": round(self.duration_s, 3), "sandbox_reason": self.sandbox_reason,
                "log_path": self.log_path, "checks": [c.to_dict() for c in self.checks]}

    def first_failure(self) -> CheckResult | None:
        """The first failed check (what a debugger should fix first)."""
        return next((c for c in self.checks if not c.passed), None)


class CheckError(Exception):
    """The file to check cannot be read (a user error, not a failed check)."""


def static_results(source: str | bytes) -> tuple[list[CheckResult], bool]:
    """Checks 1 and 2 from the source alone; returns (results, both passed)."""
    rep = static_check(source)
    if not rep.parse_ok:
        return [CheckResult("contract", False, "syntax error", rep.parse_error or "does not parse"),
                CheckResult("imports", False, None, "not run: the file does not parse")], False
    if rep.contract_ok:
        c1 = CheckResult("contract", True, "Mixer(nn.Module)", "parses; defines Mixer with the contract's __init__ and forward")
    else:
        c1 = CheckResult("contract", False, f"{len(rep.contract_errors)} problem(s)",
                         "; ".join(str(v) for v in rep.contract_errors))
    if rep.imports_ok:
        c2 = CheckResult("imports", True, ", ".join(rep.imports) or "none", "imports and constructs within the allow-list")
    else:
        vs = sorted(rep.violations, key=lambda v: v.line)
        c2 = CheckResult("imports", False, f"{len(vs)} violation(s)", "; ".join(str(v) for v in vs[:6])
                         + (f"; and {len(vs) - 6} more" if len(vs) > 6 else ""),
                         details={"violations": [str(v) for v in vs]})
    return [c1, c2], rep.ok


def check_file(path: str | Path, scale: Any = "probe", run_dir: str | Path | None = None,
               on_line: Callable[[str], None] | None = None, limits: Any = None,
               on_check: Callable[[CheckResult], None] | None = None,
               options: dict | None = None, cancel: Any = None, trusted: bool = False) -> CheckReport:
    """Check the candidate mixer file at ``path`` against ``scale`` (a name or a Scale).

    Static checks run here; dynamic checks run in the sandbox child (the candidate is never
    imported in this process). ``run_dir`` defaults to a temporary folder that is removed
    afterwards; ``on_line`` streams the child's log lines; ``on_check`` gets each finished check;
    ``limits`` is a :class:`training.sandbox.Limits`; ``options`` tunes the dynamic checks
    (``lengths``, ``time_budget_s``, ``causal_len``, ``keep_going``: run the remaining checks
    after a failure, default True); setting the ``cancel`` event (a ``threading.Event``) kills the
    child; ``trusted``: the project's own code (may run without bwrap where it is missing).
    Raises :class:`CheckError` when the file cannot be read or when untrusted code would have to
    run without the OS sandbox (see :func:`training.sandbox.isolation_mode`)."""
    from training.sandbox import Limits, SandboxError, run_sandboxed

    t0 = time.monotonic()
    p = Path(path)
    try:
        source = p.read_bytes()
    except OSError as exc:
        raise CheckError(f"cannot read {p}: {exc.strerror or exc}") from None
    cfg = _scale_config(scale)
    checks, ok = static_results(source)
    for c in checks:
        if on_check:
            on_check(c)
    if not ok:
        rest = [CheckResult(n, False, None, "not run: the static checks failed") for n in CHECK_NAMES[2:]]
        return CheckReport(False, checks + rest, scale=cfg.get("name", "?"), duration_s=time.monotonic() - t0)
    tmp = None
    if run_dir is None:
        tmp = tempfile.mkdtemp(prefix="asiarch-check-")
        run_dir = tmp
    limits = limits or Limits()

    def on_event(msg: dict) -> None:
        if msg.get("event") == "check" and on_check:
            on_check(CheckResult(**msg["check"]))

    try:
        res = run_sandboxed("check", {"path": str(p), "scale": cfg, "options": options or {}}, run_dir,
                            limits=limits, on_line=on_line, on_event=on_event, cancel=cancel, trusted=trusted)
    except SandboxError as exc:
        raise CheckError(str(exc)) from None
    dyn: dict[str, CheckResult] = {}
    running = None
    where = None  # the configuration of the call in flight when the child stopped
    for msg in res.events:
        if msg.get("event") == "start":
            running, where = msg.get("name"), None
        elif msg.get("event") == "where":
            where = str(msg.get("config") or "")[:300] or None
        elif msg.get("event") == "check":
            c = CheckResult(**msg["check"])
            dyn[c.name] = c
            running, where = None, None
    if res.result and isinstance(res.result.get("checks"), list):
        for d in res.result["checks"]:
            c = CheckResult(**d)
            dyn[c.name] = c
    for name in CHECK_NAMES[2:]:
        if name in dyn:
            checks.append(dyn[name])
        elif name == running or (running is None and not res.ok and not dyn and name == "build"):
            why = res.reason or "the sandbox child failed"
            checks.append(CheckResult(name, False, None, why + (f" (at {where})" if where and name == running else "")))
            running = "<done>"
        else:
            why = "not run: an earlier check failed" if any(not c.passed for c in checks) else \
                f"not run: {res.reason or 'the sandbox child stopped'}"
            checks.append(CheckResult(name, False, None, why))
    passed = all(c.passed for c in checks) and len(checks) == len(CHECK_NAMES)
    log_path = None if tmp else str(res.log_path)
    report = CheckReport(passed, checks, scale=cfg.get("name", "?"), isolation=res.isolation,
                         duration_s=time.monotonic() - t0, sandbox_reason=res.reason, log_path=log_path)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- inside the child


def _time_exponent(lengths: list[int], medians: list[float]) -> float:
    """The time exponent the verdict uses: the larger of the least-squares slope over all lengths
    and the slope between the two longest. A fixed per-call cost (the harness's round trip to the
    worker, start-up work) flattens the short end of the curve; the long end shows the growth
    that matters, e.g. a backward that is quadratic only through an O(L) allocation per step."""
    fit = _slope(lengths, medians)
    if len(lengths) < 2:
        return fit
    return max(fit, _slope(lengths[-2:], medians[-2:]))


def _slope(xs: list[float], ys: list[float]) -> float:
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-12)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den


class _Where(dict):
    """The configuration of the worker call in flight (key ``config``). A change is also sent to the
    parent as ``{"event": "where", "config"}`` (at most ``limit`` per check), so that a child the
    sandbox kills mid-call (wall time, CPU time) still names where it was."""

    def __init__(self, emit: Callable[[dict], None], limit: int = 400) -> None:
        super().__init__()
        self._emit, self._limit, self._sent = emit, limit, 0

    def __setitem__(self, key: str, value: str) -> None:
        changed = self.get(key) != value
        super().__setitem__(key, value)
        if changed and self._sent < self._limit:
            self._sent += 1
            self._emit({"event": "where", "config": str(value)[:300]})

    def clear(self) -> None:
        """Forget the configuration (a new check starts)."""
        super().clear()
        self._sent = 0


class _Stage:
    """Runs one dynamic check with uniform failure handling (in the harness)."""

    def __init__(self, emit: Callable[[dict], None], client: Any, mem_reason: str) -> None:
        self.emit = emit
        self.client = client
        self.mem_reason = mem_reason
        self.results: list[CheckResult] = []
        self.stopped: str | None = None
        #: ``{"config": ...}``: the configuration of the worker call in flight, named by a failure
        #: (and sent to the parent as ``{"event": "where"}``, for a child killed mid-call)
        self.where = _Where(emit)

    def run(self, name: str, fn: Callable[[], CheckResult]) -> CheckResult | None:
        from training.harness import WorkerFailed

        if self.stopped:
            res = CheckResult(name, False, None, f"not run: {self.stopped}")
            self.results.append(res)
            self.emit({"event": "check", "check": res.to_dict()})
            return res
        self.emit({"event": "start", "name": name})
        print(f"[check] {name} ...", flush=True)
        t0 = time.perf_counter()
        cpu0 = self.client.cpu_seconds()
        self.where.clear()
        try:
            res = fn()
        except WorkerFailed as exc:
            reason = self.mem_reason if exc.kind == "memory" else exc.reason
            if exc.kind == "error" and not reason.startswith("raised "):
                reason = f"raised {reason}"
            config = self.where.get("config")
            if config and config not in reason and "(at " not in reason:  # the worker may have named it
                reason = f"{reason} (at {config})"
            res = CheckResult(name, False, None, reason)
            if exc.kind in ("died", "protocol"):
                self.stopped = f"the worker is gone ({exc.reason})"
        if self.client.status is None:  # what the diagnostic layers saw (can only fail a check)
            try:
                st, _ = self.client.call("status", n_out=0)
            except WorkerFailed as exc:
                st = {}
                if not self.stopped:
                    self.stopped = f"the worker is gone ({exc.reason})"
            changes = [str(c) for c in (st.get("changes") or [])][:4]
            violations = [str(v) for v in (st.get("violations") or [])]
            if changes:
                res = CheckResult(name, False, None,
                                  f"candidate modified {', '.join(changes)} (monkeypatching is not allowed)")
                self.stopped = "the candidate tampered with shared modules"
            elif violations and res.passed:
                res = CheckResult(name, False, None, violations[0][:300])
        res.details.setdefault("seconds", round(time.perf_counter() - t0, 3))
        res.details.setdefault("worker_cpu_s", round(self.client.cpu_seconds() - cpu0, 3))
        self.results.append(res)
        self.emit({"event": "check", "check": res.to_dict()})
        print(f"[check] {name}: {'pass' if res.passed else 'FAIL'} ({res.value}) {res.reason}", flush=True)
        return res


def trace_lengths(scale: dict, longest: int = 2048) -> list[int]:
    """Lengths of the op-trace and FLOP/memory fit: the smallest scored length, doubling, up to
    at least ``longest`` (2048), with every scored length in between."""
    scored = sorted({c["L"] for c in scored_configs(scale) if not c["label"].startswith("unscored")})
    L = scored[0] if scored else 64
    out = set(scored)
    while L < longest:
        out.add(L)
        L *= 2
    out.add(max(L, longest))
    return sorted(out)


def time_vs_counts(lengths: list[int], medians: list[float], t_lengths: list[int], traces: list[dict]) -> dict:
    """Cross-check of the worker's op trace against the harness's own timings over the lengths
    both measured (the timed lengths, all within the trace): the time exponent
    (:func:`_time_exponent` of the medians) against the exponents of the counted FLOPs and memory
    traffic at the same lengths. Returns ``{compared, lengths, time_exponent, flops_exponent,
    traffic_exponent, gap, max_gap, mismatch, reason}``: ``mismatch`` when the time grows faster
    than the larger count exponent by more than ``TIME_COUNT_GAP`` (a trace that reports a linear
    cost while the timed cost grows super-linearly), or when the trace counted no memory traffic
    at all (every op writes its output)."""
    out: dict[str, Any] = {"compared": False, "lengths": list(lengths), "max_gap": TIME_COUNT_GAP, "mismatch": False}
    at = {L: i for i, L in enumerate(t_lengths)}
    if len(lengths) < 2 or any(L not in at for L in lengths):
        out["reason"] = "the trace does not cover the timed lengths"
        return out
    picked = [traces[at[L]] for L in lengths]
    if len({tuple(t.get("path") or []) for t in picked}) > 1:
        out["reason"] = "the timed lengths run different code paths (judged by the path check)"
        return out
    fl = [int(t.get("flops") or 0) for t in picked]
    by = [int(t.get("bytes") or 0) for t in picked]
    t_exp = _time_exponent(lengths, medians)
    f_exp = _time_exponent(lengths, fl) if all(v > 0 for v in fl) else None
    b_exp = _time_exponent(lengths, by) if all(v > 0 for v in by) else None
    out.update(compared=True, time_exponent=round(t_exp, 3),
               flops_exponent=None if f_exp is None else round(f_exp, 3),
               traffic_exponent=None if b_exp is None else round(b_exp, 3))
    if b_exp is None:
        out.update(mismatch=True, reason="the worker's op trace counted no memory traffic at a timed length")
        return out
    counted = max(b_exp, f_exp if f_exp is not None else b_exp)
    gap = t_exp - counted
    out["gap"] = round(gap, 3)
    if gap > TIME_COUNT_GAP:
        out.update(mismatch=True, reason=(
            f"the worker's op trace does not match the harness's timings over L={'/'.join(map(str, lengths))}: "
            f"time exponent {t_exp:.2f} vs counted FLOP exponent "
            f"{'-' if f_exp is None else f'{f_exp:.2f}'} and memory-traffic exponent {b_exp:.2f} "
            f"(gap {gap:.2f} > {TIME_COUNT_GAP})"))
    return out


def code_paths(lengths: list[int], traces: list[dict], saved: dict[int, int]) -> tuple[list[dict], str | None]:
    """Group the traced lengths by code path (the set of aten ops run) and fit, per path, the FLOP
    exponent (:func:`_time_exponent`: the larger of the fit and the long-end slope) and the
    activation-memory exponent. Returns (paths, failure reason or None): a path of two or more
    lengths must have both exponents <= ``EXPONENT_MAX``; a path seen at one length only must not
    cost more than twice the FLOPs per token of the neighbouring path."""
    paths: list[dict] = []
    for L, tr in zip(lengths, traces):
        sig = tuple(tr.get("path") or [])
        if paths and paths[-1]["sig"] == sig:
            paths[-1]["lengths"].append(L)
            paths[-1]["flops"].append(int(tr.get("flops") or 0))
            paths[-1]["bytes"].append(int(tr.get("bytes") or 0))
        else:
            paths.append({"sig": sig, "lengths": [L], "flops": [int(tr.get("flops") or 0)],
                          "bytes": [int(tr.get("bytes") or 0)]})
    longest = set(paths[-1]["sig"]) if paths else set()
    why = None
    bad_i = 0
    out = []
    for i, p in enumerate(paths):
        Ls, fl = p["lengths"], p["flops"]
        rec = {"lengths": Ls, "flops": fl,
               "ops_not_at_longest": sorted(set(p["sig"]) - longest)[:8],
               "ops_only_at_longest": sorted(longest - set(p["sig"]))[:8]}
        span = f"L={Ls[0]}" + (f"-{Ls[-1]}" if len(Ls) > 1 else "")
        if len(Ls) >= 2:
            f_exp = _time_exponent(Ls, [max(v, 1) for v in fl]) if all(v > 0 for v in fl) else 0.0
            mem = [saved.get(L, 0) for L in Ls]
            m_exp = _slope(Ls, mem) if all(v > 0 for v in mem) else 0.0
            by = p["bytes"]
            b_exp = _time_exponent(Ls, by) if all(v > 0 for v in by) else 0.0
            rec.update(flops_exponent=round(f_exp, 3), memory_exponent=round(m_exp, 3),
                       traffic_exponent=round(b_exp, 3))
            if why is None and max(f_exp, m_exp, b_exp) > EXPONENT_MAX:
                which = (f"FLOP exponent {f_exp:.2f}" if f_exp > EXPONENT_MAX else
                         f"memory exponent {m_exp:.2f}" if m_exp > EXPONENT_MAX else
                         f"memory-traffic exponent {b_exp:.2f} (bytes written by the ops of forward+backward)")
                why, bad_i = f"the code path at {span} has {which} > {EXPONENT_MAX}", i
        else:
            nb = paths[i - 1] if i > 0 else (paths[i + 1] if i + 1 < len(paths) else None)
            if nb is not None and fl[0] > 0:
                j = -1 if i > 0 else 0
                ratio = (fl[0] / Ls[0]) / max(nb["flops"][j] / nb["lengths"][j], 1e-9)
                rec["flops_per_token_vs_neighbour"] = round(ratio, 3)
                if why is None and ratio > 2.0:
                    bad_i = i
                    why = (f"the code path at {span} (seen at one length) costs {ratio:.1f}x the FLOPs per token "
                           f"of the path at L={nb['lengths'][j]}")
        out.append(rec)
    if why and len(paths) > 1:
        bad = out[bad_i]
        added = ", ".join(bad["ops_not_at_longest"]) or "-"
        why = (f"the algorithm changes with the length ({len(paths)} code paths; at L={bad['lengths'][0]} it runs "
               f"{added}, which L={lengths[-1]} does not): {why}")
    return out, why


def run_dynamic_checks(request: dict, emit: Callable[[dict], None]) -> dict:
    """Checks 3-7 on the candidate, computed by the trusted harness from the tensors a forked
    worker returns (:class:`training.harness.WorkerClient`); the candidate runs only in the
    worker. ``request`` is the sandbox request (payload: ``path``, ``scale``, ``options``,
    ``static_check``; limits).

    Every input is generated here: causality perturbations from a seed drawn from the OS that the
    worker never sees; the cost exponents from the harness's own timings of the worker's
    forward+backward passes; determinism by comparing the tensors of two builds. Returns
    ``{"ok", "reason", "checks": [...]}``; each finished check is also emitted as
    ``{"event": "check", "check": {...}}`` as soon as it is known."""
    import os
    import random

    import torch

    from training.harness import WorkerClient, WorkerFailed

    payload = request.get("payload") or {}
    path = str(payload.get("path"))
    scale = payload.get("scale") or {}
    options = dict(payload.get("options") or {})
    limits = request.get("limits") or {}
    static = bool(payload.get("static_check", True))
    torch.set_num_threads(max(1, int(options.get("threads", limits.get("threads", 1)))))
    d = int(scale.get("d_model", 64))
    h = int(scale.get("n_heads", 2))
    budget = int(scale.get("mixer_param_budget", 8 * d * d))
    mem_reason = options.get("mem_reason") or \
        f"exceeded {float(limits.get('address_space_gib', 4)):g} GiB address space"
    secret = int.from_bytes(os.urandom(8), "little")  # the worker never sees it
    gen = torch.Generator().manual_seed(secret)
    order = random.Random(secret)

    with WorkerClient(request) as client:
        stage = _Stage(emit, client, mem_reason)

        where = stage.where  # the configuration of the call in flight (named by a failure)
        fwd, fwd_bwd = forward_fns(client, where)

        def build() -> CheckResult:
            where["config"] = f"building Mixer(d_model={d}, n_heads={h}) under seed 0"
            vals, _ = client.call("build", {"path": path, "d_model": d, "n_heads": h, "seed": 0,
                                            "static": static}, n_out=0)
            n = vals.get("params")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                return CheckResult("build", False, None, "the worker reported no parameter count")
            if n > budget:
                return CheckResult("build", False, n, f"{n:,} parameters exceed the budget of {budget:,} at d_model={d}, n_heads={h}")
            return CheckResult("build", True, n, f"built at d_model={d}, n_heads={h}; {n:,} of {budget:,} parameters")

        def forward_backward() -> CheckResult:
            x = torch.randn(2, 32, d, generator=gen)
            g = torch.randn(2, 32, d, generator=gen)
            vals, (y, gx, gp) = fwd_bwd(x, g, seed=1, param_grads=True)
            at = f" (Gaussian inputs, {where['config']}, forward+backward, params as-initialised)"
            if tuple(y.shape) != tuple(x.shape):
                return CheckResult("forward_backward", False, str(tuple(y.shape)),
                                   f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)}{at}")
            if y.dtype != x.dtype:
                return CheckResult("forward_backward", False, str(y.dtype),
                                   f"output dtype {y.dtype} != input dtype {x.dtype}{at}")
            bad = int((~torch.isfinite(y)).sum())
            if bad:
                pos = int((~torch.isfinite(y)).any(-1).any(0).nonzero()[0, 0])
                return CheckResult("forward_backward", False, f"{bad} non-finite",
                                   f"{bad} of {y.numel()} output values are NaN or infinite, the first at position "
                                   f"{pos}{at}")
            if tuple(gx.shape) != tuple(x.shape) or not bool(torch.isfinite(gx).all()):
                return CheckResult("forward_backward", False, "input grad",
                                   f"the gradient w.r.t. the input is missing or not finite{at}")
            if float(gx.abs().max()) == 0.0:
                return CheckResult("forward_backward", False, "0", f"the output does not depend on the input{at}")
            if gp.numel() and not bool(torch.isfinite(gp).all()):
                bad_p = int((~torch.isfinite(gp)).sum())
                return CheckResult("forward_backward", False, f"{bad_p} values",
                                   f"{bad_p} parameter gradient values are not finite{at}")
            present = vals.get("grad_present") if isinstance(vals.get("grad_present"), list) else []
            return CheckResult("forward_backward", True, f"{tuple(y.shape)}",
                               f"shape kept, finite outputs and gradients ({sum(bool(p) for p in present)}/"
                               f"{len(present)} parameters get gradients)")

        def causality() -> CheckResult:
            where["config"] = "the causality forwards"
            return CheckResult(**causality_check(client, scale, options, d, gen, order, rebuild=lambda: client.call(
                "build", {"path": path, "d_model": d, "n_heads": h, "seed": 0, "static": static}, n_out=0),
                fwd=fwd, fwd_bwd=fwd_bwd))

        def subquadratic() -> CheckResult:
            lengths = [int(v) for v in options.get("lengths", DEFAULT_LENGTHS)]
            budget_s = float(options.get("time_budget_s", 10.0))
            xs = {L: torch.randn(1, L, d, generator=gen) for L in lengths}
            gs = {L: torch.randn(1, L, d, generator=gen) for L in lengths}
            mem = {}
            for L in lengths:
                where["config"] = f"saved activations at L={L}, {COST_CONFIG}"
                vals, _ = client.call("saved_bytes", {}, [xs[L], gs[L]], n_out=0)
                v = vals.get("saved_bytes")
                mem[L] = int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
            inner = 1

            def step(L: int) -> float:
                where["config"] = f"timing L={L}, {COST_CONFIG}"
                t0 = time.perf_counter()
                client.call("timed", {"reps": inner}, [xs[L], gs[L]], n_out=0)
                return (time.perf_counter() - t0) / inner

            warm = {L: step(L) for L in lengths}
            slow = max(warm.values())
            if slow > float(options.get("max_step_s", 20.0)):
                return CheckResult("subquadratic", False, None,
                                   f"one forward+backward at L={max(warm, key=warm.get)} took {slow:.1f} s (too slow to "
                                   f"measure; {COST_CONFIG})")
            # each timed sample should last >= ~25 ms at the shortest length (timer and scheduler noise)
            inner = int(min(32, max(1, math.ceil(0.025 / max(warm[lengths[0]], 1e-6)))))
            per_round = sum(warm.values()) * inner
            rounds = int(min(7, max(3, budget_s / max(per_round, 1e-6))))
            times: dict[int, list[float]] = {L: [] for L in lengths}

            def more(n: int) -> None:
                for _ in range(n):
                    seq = list(lengths)
                    order.shuffle(seq)
                    for L in seq:
                        times[L].append(step(L))

            cpu0 = client.cpu_seconds()
            more(rounds)
            med = [statistics.median(times[L]) for L in lengths]
            t_exp = _time_exponent(lengths, med)
            spent = per_round * rounds
            if abs(t_exp - EXPONENT_MAX) < 0.2 and spent < 2 * budget_s:  # close call: look again
                more(rounds)
                med = [statistics.median(times[L]) for L in lengths]
                t_exp = _time_exponent(lengths, med)
            mem_vals = [mem[L] for L in lengths]
            m_exp = _slope(lengths, mem_vals) if all(v > 0 for v in mem_vals) else 0.0
            # op traces from the smallest scored length up: a change of algorithm across lengths
            t_lengths = [int(v) for v in options.get("trace_lengths", trace_lengths(scale, TRACE_LONGEST))]
            t_in: list[Any] = []
            for L in t_lengths:
                t_in += [xs.get(L, torch.randn(1, L, d, generator=gen)), gs.get(L, torch.randn(1, L, d, generator=gen))]
            tt0 = time.perf_counter()
            where["config"] = f"op trace at L={'/'.join(map(str, t_lengths))}, {COST_CONFIG}"
            tvals, _ = client.call("trace", {}, t_in, n_out=0)
            trace_s = time.perf_counter() - tt0
            traces = tvals.get("traces") if isinstance(tvals.get("traces"), list) else []
            saved = dict(mem)
            for L in t_lengths:
                if L not in saved:
                    where["config"] = f"saved activations at L={L}, {COST_CONFIG}"
                    sv, _ = client.call("saved_bytes", {}, [torch.randn(1, L, d, generator=gen),
                                                            torch.randn(1, L, d, generator=gen)], n_out=0)
                    v = sv.get("saved_bytes")
                    saved[L] = int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
            if len(traces) != len(t_lengths) or not all(isinstance(t, dict) for t in traces):
                return CheckResult("subquadratic", False, None,
                                   f"the worker returned no op trace (L={'/'.join(map(str, t_lengths))}, {COST_CONFIG})")
            paths, path_why = code_paths(t_lengths, traces, saved)
            cross = time_vs_counts(lengths, med, t_lengths, traces)
            for pth in paths:  # the timed exponent belongs to the path that ran the timed lengths
                if set(lengths) <= set(pth["lengths"]):
                    pth["time_exponent"] = round(t_exp, 3)
            details = {"lengths": lengths, "median_s": [round(v, 5) for v in med], "time_exponent": round(t_exp, 3),
                       "saved_bytes": mem_vals, "memory_exponent": round(m_exp, 3),
                       "rounds": len(times[lengths[0]]), "inner": inner,
                       "timed_by": "harness", "worker_cpu_s": round(client.cpu_seconds() - cpu0, 3),
                       "trace_lengths": t_lengths, "trace_s": round(trace_s, 3), "paths": paths,
                       "time_vs_counts": cross, "config": COST_CONFIG}
            desc = (f"time exponent {t_exp:.2f}, memory exponent {m_exp:.2f} over L={'/'.join(map(str, lengths))} "
                    f"(medians {', '.join(f'{v * 1000:.1f}' for v in med)} ms)")
            desc += f"; {len(paths)} code path(s) over L={t_lengths[0]}-{t_lengths[-1]}, FLOP exponent(s) " + \
                ", ".join(str(p.get("flops_exponent", "-")) for p in paths)
            if path_why and len(paths) > 1:  # a change of algorithm: name it before any mixed fit
                return CheckResult("subquadratic", False, max([p.get("flops_exponent", 0.0) for p in paths] + [t_exp]),
                                   f"super-linear cost on a code path: {path_why} ({COST_CONFIG})", details=details)
            if cross.get("mismatch"):
                return CheckResult("subquadratic", False, round(t_exp, 3),
                                   f"{cross['reason']} ({COST_CONFIG})", details=details)
            if t_exp > EXPONENT_MAX or m_exp > EXPONENT_MAX:
                which = "time" if t_exp > EXPONENT_MAX else "memory"
                return CheckResult("subquadratic", False, round(max(t_exp, m_exp), 3),
                                   f"super-linear {which} cost: {desc} > {EXPONENT_MAX} ({COST_CONFIG})", details=details)
            if path_why:
                return CheckResult("subquadratic", False, max([p.get("flops_exponent", 0.0) for p in paths] + [t_exp]),
                                   f"super-linear cost on a code path: {path_why} ({COST_CONFIG})", details=details)
            return CheckResult("subquadratic", True, round(t_exp, 3), desc + f" <= {EXPONENT_MAX}", details=details)

        def determinism() -> CheckResult:
            x = torch.randn(2, 48, d, generator=gen)
            g = torch.ones(2, 48, d)

            def once() -> tuple:
                client.call("build", {"path": path, "d_model": d, "n_heads": h, "seed": 123, "static": static}, n_out=0)
                vals, (y, gx, gp) = fwd_bwd(x, g, seed=7, param_grads=True)
                return y, gx, gp, vals.get("grad_present")

            y1, gx1, gp1, pr1 = once()
            y2, gx2, gp2, pr2 = once()
            at = "Gaussian inputs, L=48, batch 2, train mode, grad on, forward+backward, build seed 123, run seed 7"
            if pr1 != pr2 or gp1.shape != gp2.shape or gx1.shape != gx2.shape or y1.shape != y2.shape:
                return CheckResult("determinism", False, None, f"gradients differ in presence or shape between runs ({at})")
            diff = max(max_abs(y1 - y2), max_abs(gx1 - gx2), max_abs(gp1 - gp2))
            if not math.isfinite(diff) or diff > 1e-6:
                what = max((("outputs", max_abs(y1 - y2)), ("input gradients", max_abs(gx1 - gx2)),
                            ("parameter gradients", max_abs(gp1 - gp2))), key=lambda e: e[1])[0]
                pos = ""
                if what == "outputs" and y1.dim() == 3:
                    per = torch.nan_to_num((y1 - y2).abs(), nan=float("inf")).amax(dim=(0, 2))
                    pos = f", first at position {int((per > 1e-6).nonzero()[0, 0])}" if bool((per > 1e-6).any()) else ""
                return CheckResult("determinism", False, diff,
                                   f"two seeded runs differ by {diff:.3g} in their {what}{pos} ({at})")
            return CheckResult("determinism", True, diff, "two seeded builds and runs give identical outputs and gradients")

        stage.run("build", build)
        if not stage.results[-1].passed and not stage.stopped:
            stage.stopped = "the mixer did not build"
        stage.run("forward_backward", forward_backward)
        if not stage.results[-1].passed and not stage.stopped:
            stage.stopped = "forward/backward failed"
        keep_going = bool(options.get("keep_going", True))
        for name, fn in (("causality", causality), ("subquadratic", subquadratic), ("determinism", determinism)):
            stage.run(name, fn)
            if not keep_going and not stage.results[-1].passed and not stage.stopped:
                stage.stopped = f"{name} failed (keep_going=False)"
        cpu = client.cpu_seconds()
        memory = client.memory_mib()
    checks = [r.to_dict() for r in stage.results]
    failed = [r for r in stage.results if not r.passed]
    return {"ok": not failed, "reason": f"{failed[0].name}: {failed[0].reason}" if failed else None,
            "checks": checks, "worker_cpu_s": round(cpu, 3), "worker_memory_mib": memory}


def format_report(report: CheckReport) -> str:
    """A plain-text table of the report (for logs and the debugger)."""
    lines = [f"check {'PASSED' if report.passed else 'FAILED'} (scale {report.scale})"]
    for i, c in enumerate(report.checks, 1):
        lines.append(f"{i}. {c.name:<17} {'pass' if c.passed else 'FAIL'}  {c.value!s:<20} {c.reason}")
    return "\n".join(lines)


def _finite(o: Any) -> Any:
    """Strict-JSON form: non-finite floats become strings ("inf", "nan")."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def report_json(report: CheckReport) -> str:
    """The report as strict JSON text."""
    return json.dumps(_finite(report.to_dict()), indent=2, default=str, allow_nan=False)
