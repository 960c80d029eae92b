"""The Engineer (check, then evaluate, in the sandbox) with the Debugger (docs/ARCHITECTURE.md steps 4–6).

``Engineer.develop`` runs the check; a failure goes to the Debugger with the code, the error and
the log tail, and its repaired code is re-checked (bounded rounds, ``debug_rounds``). A passing
check may wait for the user (supervised mode, through the ``approval`` callback) and is then
evaluated; a training error goes to the Debugger too, and its repair is re-checked and
re-evaluated. The idea is kept, not discarded; every round is in the outcome (and so in the
record).

The check and the evaluation run through an ``Executor``; ``SandboxExecutor`` uses
``training.sandbox.run_sandboxed`` (child process, the parent never imports candidate code).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from agents import prompts
from agents.llm import CallRecorder, ChatBackend, LLMError
from agents.llm_session import RoleSession, fallback
from agents.researcher import validate_code

__all__ = [
    "StepResult",
    "Executor",
    "SandboxExecutor",
    "Debugger",
    "LLMDebugger",
    "BuiltinDebugger",
    "Decision",
    "DevelopOutcome",
    "Engineer",
    "scale_spec",
]

LineFn = Callable[[str], None]


@dataclass
class StepResult:
    """The result of a check or an evaluation.

    ``ok``: passed / trained. ``checks``: the check list (dicts: name, passed, value, reason).
    ``metrics``: the evaluation dict (evaluate only). ``error``: why it failed. ``log_tail``: the
    end of the log.
    """

    ok: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    error: str = ""
    log_tail: str = ""
    seconds: float = 0.0


class Executor(Protocol):
    """Runs checks and evaluations of a mixer file (in a sandbox)."""

    def check(self, path: Path, run_dir: Path, on_line: LineFn | None = None, trusted: bool = False) -> StepResult:
        """Static and dynamic checks of the file at ``path``. ``trusted``: the project's own code
        (may run without the OS sandbox where it is unavailable)."""
        ...

    def evaluate(self, path: Path, run_dir: Path, seed: int, baseline: dict[str, Any] | None,
                 on_line: LineFn | None = None, trusted: bool = False,
                 early_stop: float | None = None) -> StepResult:
        """The evaluation ladder at the executor's scale (``trusted`` as for :meth:`check`).
        ``early_stop``: stop the LM run at its half-way checkpoint when its loss there is more
        than this many of the seed's seed-to-seed spreads above the seed's (``baseline``, the
        seed's metrics; decided by the sandbox harness, ``training.early_stop``); None: never."""
        ...


def with_trust(fn: Callable[..., Any], *args: Any, trusted: bool = False, **kwargs: Any) -> Any:
    """Call an executor's ``check``/``evaluate`` passing ``trusted`` (and ``early_stop``, when
    given and not None) when it accepts them (an older or test executor without the keyword
    treats every file alike and never stops early)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "trusted" in params or takes_any:
        kwargs["trusted"] = trusted
    if "early_stop" in kwargs and (kwargs["early_stop"] is None or not ("early_stop" in params or takes_any)):
        kwargs.pop("early_stop")
    return fn(*args, **kwargs)


def scale_spec(scale: Any, as_dict: bool = False) -> Any:
    """A scale (name or ``training.scales.Scale``) as the sandbox payload carries it: the name of
    a standard scale (unless ``as_dict``), else the Scale as a JSON-able dict."""
    import dataclasses

    from training.scales import SCALES, get_scale

    s = get_scale(scale)
    if not as_dict and SCALES.get(s.name) == s:
        return s.name
    return json.loads(json.dumps(dataclasses.asdict(s), default=str))


def _tail(path: Path | None, n: int = 40) -> str:
    if path is None:
        return ""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def killed_metrics(scale: Any, seed: int, status: str, reason: str, guards: dict[str, Any] | None,
                   wall_s: float) -> dict[str, Any]:
    """The metrics of an evaluation whose child was killed by a sandbox limit (nothing came
    back): every measurement null, ``partial`` true, ``status`` ``hung`` or ``too_slow``."""
    from training.evaluate import _empty_metrics
    from training.scales import get_scale

    m = _empty_metrics(get_scale(scale), seed)
    m.update(status=status, stop_reason=f"{'hang guard' if status == 'hung' else 'too slow'}: the sandbox "
             f"{reason}", partial=True, guards=guards, wall_seconds=round(float(wall_s), 2),
             probes={k: None for k in m["probes"]} or {p.label: None for p in get_scale(scale).probes})
    return m


class SandboxExecutor:
    """Check and evaluate through ``training.sandbox.run_sandboxed`` at a given scale.

    ``scale`` is a scale name or a ``Scale`` (e.g. ``training.scales.scaled_down("probe")`` for
    tests); ``limits`` is passed to the sandbox (default: ``Limits()`` for checks, derived from
    the guards for evaluations). ``guards``: the factors of the evaluation guards
    (``training.guards.GuardSettings`` or its dict, the lab's ``[guards]``); each evaluation's
    limits are derived from them and from the seed's metrics passed as ``baseline``
    (:meth:`guards_for`). ``unsafe_no_sandbox``: where bubblewrap is unavailable, run untrusted
    code anyway (rlimits and the in-process guard only; the ``[executor] unsafe_no_sandbox``
    key) instead of failing the step.
    """

    def __init__(self, scale: Any = "probe", limits: Any = None, guards: Any = None,
                 unsafe_no_sandbox: bool = False) -> None:
        from training.guards import GuardSettings

        self.scale = scale
        self.limits = limits
        self.guard_settings = GuardSettings.from_any(guards)
        self.unsafe_no_sandbox = bool(unsafe_no_sandbox)

    def _unsafe(self, limits: Any) -> Any:
        """``limits`` with ``unsafe_no_sandbox`` set when this executor was asked for it."""
        if not self.unsafe_no_sandbox:
            return limits
        import dataclasses

        from training.sandbox import Limits

        return dataclasses.replace(limits if limits is not None else Limits(), unsafe_no_sandbox=True)

    def guards_for(self, baseline: dict[str, Any] | None) -> Any:
        """The ``training.guards.Guards`` of an evaluation against ``baseline`` (the seed's
        metrics at this scale; None or partial: no efficiency cap, hang guard from the scale)."""
        from training.guards import Guards
        from training.scales import get_scale

        s = get_scale(self.scale)
        return Guards.relative_to(baseline, self.guard_settings, expected_s=s.expected_seconds, scale_name=s.name)

    def _payload(self, path: Path, as_dict: bool, **more: Any) -> dict[str, Any]:
        return {"path": str(path), "scale": scale_spec(self.scale, as_dict), **more}

    def check(self, path: Path, run_dir: Path, on_line: LineFn | None = None, trusted: bool = False) -> StepResult:
        """``training.checker.check_file``: static checks here, dynamic ones in the sandbox."""
        from training.checker import CheckError, check_file

        from training.sandbox import SandboxError

        t0 = time.perf_counter()
        try:
            rep = check_file(path, self.scale, run_dir=run_dir, on_line=on_line,
                             limits=self._unsafe(self.limits) if self.unsafe_no_sandbox else self.limits, trusted=trusted)
        except (CheckError, SandboxError) as exc:
            return StepResult(False, [], None, str(exc), "", time.perf_counter() - t0)
        checks = [c.to_dict() for c in rep.checks]
        error = ""
        if not rep.passed:
            bad = rep.first_failure()
            error = f"{bad.name}: {bad.reason}" if bad is not None else (rep.sandbox_reason or "check failed")
        tail = _tail(Path(rep.log_path)) if rep.log_path else ""
        return StepResult(rep.passed, checks, None, error, tail, time.perf_counter() - t0)

    def evaluate(self, path: Path, run_dir: Path, seed: int, baseline: dict[str, Any] | None,
                 on_line: LineFn | None = None, trusted: bool = False,
                 early_stop: float | None = None) -> StepResult:
        """One evaluation in the sandbox (``trusted``: see :meth:`check`; ``early_stop``: see
        :class:`Executor`; the harness decides from ``baseline``)."""
        from training.sandbox import Limits, SandboxError, run_sandboxed

        t0 = time.perf_counter()
        guards = self.guards_for(baseline)
        limits = self.limits if self.limits is not None else Limits.for_evaluation(self.scale, guards=guards)
        more: dict[str, Any] = {}
        if early_stop is not None and baseline:
            more["early_stop"] = {"spreads": float(early_stop)}
        try:
            res = run_sandboxed("evaluate", self._payload(path, False, seed=seed, baseline=baseline,
                                                          guards=guards.to_dict(), **more),
                                run_dir, limits=self._unsafe(limits), on_line=on_line, trusted=trusted)
        except SandboxError as exc:
            return StepResult(False, [], None, f"the sandbox could not start: {exc}", "", time.perf_counter() - t0)
        result = res.result if isinstance(res.result, dict) else None
        metrics = result.get("metrics", result) if result is not None else None
        metrics = metrics if isinstance(metrics, dict) and "status" in metrics else None
        if metrics is None and res.reason and (res.reason.startswith("killed after")
                                               or res.reason.startswith("exceeded") and "CPU time" in res.reason):
            # the kernel-level backstop above the guards ended the child: still a guard's verdict
            metrics = killed_metrics(self.scale, seed, "hung" if res.reason.startswith("killed") else "too_slow",
                                     res.reason, guards.to_dict(), res.duration_s)
        ok = bool(res.ok and metrics is not None and metrics.get("status") == "ok")
        error = ""
        if not ok:
            error = ((metrics or {}).get("error") or (metrics or {}).get("stop_reason") or res.reason
                     or "evaluation failed")
        return StepResult(ok, [], metrics, error, _tail(res.log_path), time.perf_counter() - t0)


class Debugger(Protocol):
    """Repairs failing code; returns ``(code, explanation)`` or None when it cannot."""

    spec: str

    def repair(self, code: str, error: str, log_tail: str, stage: str, motivation: str,
               recorder: CallRecorder) -> tuple[str, str] | None:
        """A repaired file and what changed, or None."""
        ...


class BuiltinDebugger:
    """The no-LLM debugger: mechanical repairs only (strip markdown fences, tabs); else None."""

    spec = "builtin"

    def repair(self, code: str, error: str, log_tail: str, stage: str, motivation: str,
               recorder: CallRecorder) -> tuple[str, str] | None:
        """Fix what needs no understanding of the design; None when nothing applies."""
        t0 = time.perf_counter()
        fixed = code
        m = re.match(r"^\s*```(?:python|py)?\s*\n(.*?)\n```\s*$", code, re.S)
        if m:
            fixed = m.group(1)
        fixed = fixed.replace("\t", "    ")
        changed = fixed != code
        recorder.record("debugger", "builtin", f"{stage}: {error[:300]}",
                        "mechanical repair" if changed else "no builtin repair applies",
                        time.perf_counter() - t0, None, None)
        return (fixed, "removed markdown fences / tabs") if changed else None


class LLMDebugger:
    """The Debugger backed by a chat model (the builtin one when the server is unavailable)."""

    def __init__(self, backend: ChatBackend, retries: int = 2, backoff_s: float = 1.0,
                 session: RoleSession | None = None) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.session = session or RoleSession("debugger", backend, retries=retries, backoff_s=backoff_s)
        self.fallback = BuiltinDebugger()

    def repair(self, code: str, error: str, log_tail: str, stage: str, motivation: str,
               recorder: CallRecorder) -> tuple[str, str] | None:
        """Ask the model for ``{explanation, code}`` (the code must parse and define Mixer); the
        builtin debugger answers this step when the model cannot."""
        pr = prompts.debugger_prompt(code, error, log_tail, stage, motivation)
        try:
            obj = self.session.ask(recorder, pr, prompts.DEBUGGER_SCHEMA,
                                   validate=lambda o: validate_code(str(o.get("code", ""))))
        except LLMError as exc:
            fallback(recorder, "debugger", self.spec, exc)
            return self.fallback.repair(code, error, log_tail, stage, motivation, recorder)
        recorder.step("debugger", "llm", self.spec)
        return str(obj["code"]), str(obj["explanation"])


@dataclass
class Decision:
    """The user's answer to an approval request: ``approve``, ``reject`` (with ``reason``) or
    ``edit`` (with the new ``code``, which is re-checked and then evaluated)."""

    action: str
    reason: str = ""
    code: str | None = None


@dataclass
class DevelopOutcome:
    """What the Engineer did: final ``status`` (``ok | check_failed | eval_failed | too_slow |
    stopped_early | rejected``; ``too_slow``: the evaluation tripped the efficiency guard;
    ``stopped_early``: it was behind the seed at the LM run's half-way checkpoint; ``rejected``: by
    the user, or the evaluation harness found a trained model non-causal, metrics status
    ``rejected``),
    the final ``code``, the last ``checks``, ``metrics``, ``error``, every debug ``rounds`` item
    ({round, stage, error, log_tail, explanation, passed}) and stage ``timings``.
    ``side_seeds``: {seed: StepResult} of the ``side_seeds`` evaluated beside the final code's
    evaluation (empty unless asked for and that evaluation succeeded)."""

    status: str
    code: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    error: str = ""
    log_tail: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    edited: bool = False
    side_seeds: dict[int, Any] = field(default_factory=dict)


class Engineer:
    """Runs check → (approval) → evaluate with bounded Debugger repair rounds."""

    def __init__(self, executor: Executor, debugger: Debugger, debug_rounds: int = 3) -> None:
        self.executor = executor
        self.debugger = debugger
        self.debug_rounds = debug_rounds

    def _evaluate(self, path: Path, run_dir: Path, attempt: int, seed: int, side_seeds: tuple[int, ...],
                  baseline: dict[str, Any] | None, on_line: LineFn, trusted: bool,
                  early_stop: float | None = None) -> tuple[StepResult, dict[int, Any]]:
        """Evaluate ``path`` on ``seed`` (with the ``early_stop`` rule: rung 0 only) and, at the same
        time, on ``side_seeds`` (one thread each: fixed-work runs, so side by side changes their
        wall time only). Returns the ``seed`` result and {side seed: result}; all runs have ended
        when it returns (the file may be rewritten by a repair afterwards)."""
        def one(sd: int, folder: Path, stop: float | None = None) -> StepResult:
            return with_trust(self.executor.evaluate, path, folder, sd, baseline, on_line=on_line, trusted=trusted,
                              early_stop=stop)

        main_dir = run_dir / f"eval_r{attempt}"
        if not side_seeds:
            return one(seed, main_dir, early_stop), {}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1 + len(side_seeds), thread_name_prefix="asiarch-seed") as pool:
            side = {sd: pool.submit(one, sd, run_dir / f"eval_r{attempt}_seed{sd}") for sd in side_seeds}
            ev = one(seed, main_dir, early_stop)
            return ev, {sd: fut.result() for sd, fut in side.items()}

    def develop(
        self,
        code: str,
        run_dir: Path,
        motivation: str = "",
        seed: int = 0,
        baseline: dict[str, Any] | None = None,
        recorder: CallRecorder | None = None,
        approval: Callable[[str, list[dict[str, Any]]], Decision] | None = None,
        on_stage: Callable[[str, str, str], None] | None = None,
        on_line: Callable[[str, str], None] | None = None,
        trusted: bool = False,
        side_seeds: tuple[int, ...] = (),
        early_stop: float | None = None,
    ) -> DevelopOutcome:
        """Check, get approval (if ``approval`` is given), evaluate; repair failures.

        ``side_seeds``: further seeds to evaluate at the same time as ``seed`` (the caller knows
        the design will need them whatever its first result, e.g. while the lab's top is not
        full); their results land in ``DevelopOutcome.side_seeds`` when the ``seed`` run is ok.

        ``on_stage(stage, status, detail)`` is told of ``check``/``debug``/``evaluate`` starting
        and ending; ``on_line(source, line)`` gets log lines (``check`` / ``train``).
        ``trusted``: ``code`` is the project's own (built-in researcher); a repaired or edited
        version never is. ``early_stop``: the evaluation may end at the LM run's half-way
        checkpoint (see :class:`Executor`); the outcome is then ``stopped_early``.
        """
        rec = recorder or CallRecorder()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        stage_cb = on_stage or (lambda s, st, d: None)
        line_cb = on_line or (lambda src, line: None)
        out = DevelopOutcome(status="check_failed", code=code)
        repairs = 0
        # a redo after a crash numbers its attempts after the earlier ones (fresh folders: a
        # sandbox child orphaned by the crash may still be writing into the old ones)
        attempt = len(list(run_dir.glob("mixer_r*.py")))
        approved = approval is None
        while True:
            attempt += 1
            path = run_dir / f"mixer_r{attempt}.py"
            path.write_text(out.code, encoding="utf-8")
            (run_dir / "mixer.py").write_text(out.code, encoding="utf-8")
            stage_cb("check", "started", f"attempt {attempt}")
            own = trusted and out.code == code  # a repair or an edit is not the project's code
            chk = with_trust(self.executor.check, path, run_dir / f"check_r{attempt}",
                             on_line=lambda l: line_cb("check", l), trusted=own)
            out.timings["check"] = out.timings.get("check", 0.0) + chk.seconds
            out.checks = chk.checks
            stage_cb("check", "finished" if chk.ok else "failed", chk.error)
            if not chk.ok:
                failure = ("check", chk.error, chk.log_tail)
            else:
                if not approved:
                    dec = approval(out.code, chk.checks)  # type: ignore[misc]
                    if dec.action == "reject":
                        out.status, out.error = "rejected", dec.reason or "rejected by the user"
                        return out
                    if dec.action == "edit" and dec.code is not None and dec.code != out.code:
                        out.code = dec.code
                        out.edited = True
                        out.rounds.append({"round": 0, "stage": "approval", "error": "",
                                           "log_tail": "", "explanation": "edited by the user", "passed": None})
                        approved = True
                        continue
                    approved = True
                stage_cb("evaluate", "started", "")
                ev, side = self._evaluate(path, run_dir, attempt, seed, side_seeds, baseline,
                                          lambda l: line_cb("train", l), own, early_stop)
                out.timings["evaluate"] = out.timings.get("evaluate", 0.0) + ev.seconds
                out.metrics = ev.metrics
                out.log_tail = ev.log_tail
                stage_cb("evaluate", "finished" if ev.ok else "failed", ev.error)
                if ev.ok:
                    out.status, out.error = "ok", ""
                    out.side_seeds = side
                    if out.rounds:
                        out.rounds[-1]["passed"] = True
                    return out
                # a trained model the harness found non-causal is rejected: a finding about the
                # design (it reads the future once trained), never ranked and not for the debugger
                if ev.metrics is not None and ev.metrics.get("status") == "rejected":
                    out.status, out.error = "rejected", ev.error or str(ev.metrics.get("stop_reason") or "rejected")
                    return out
                # a run stopped by the monitor (diverging, leak), a guard (too slow, hung) or at the
                # half-way checkpoint (behind the seed) is a result about the design, not a bug
                # for the debugger
                st = (ev.metrics or {}).get("status")
                if ev.metrics is not None and st in ("stopped", "too_slow", "hung", "stopped_early"):
                    out.status = st if st in ("too_slow", "stopped_early") else "eval_failed"
                    out.error = ev.error
                    return out
                failure = ("evaluate", ev.error, ev.log_tail)
            stage, error, log_tail = failure
            if out.rounds and out.rounds[-1]["passed"] is None:
                out.rounds[-1]["passed"] = False
            if repairs >= self.debug_rounds:
                out.status = "check_failed" if stage == "check" else "eval_failed"
                out.error = error
                out.log_tail = log_tail
                return out
            repairs += 1
            stage_cb("debug", "started", f"round {repairs}: {error[:200]}")
            t0 = time.perf_counter()
            fixed = self.debugger.repair(out.code, error, log_tail, stage, motivation, rec)
            out.timings["debug"] = out.timings.get("debug", 0.0) + time.perf_counter() - t0
            item = {"round": repairs, "stage": stage, "error": error, "log_tail": log_tail[-2000:],
                    "explanation": fixed[1] if fixed else "", "passed": None, "debugger": self.debugger.spec}
            out.rounds.append(item)
            if fixed is None or fixed[0] == out.code:
                item["passed"] = False
                stage_cb("debug", "failed", "no repair")
                out.status = "check_failed" if stage == "check" else "eval_failed"
                out.error = error
                out.log_tail = log_tail
                return out
            stage_cb("debug", "finished", fixed[1][:200])
            out.code = fixed[0]
