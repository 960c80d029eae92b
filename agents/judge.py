"""The Judge: performance, innovation and complexity scores (1–10) that make s_judge (step 8).

``BuiltinJudge`` scores what the loss and score terms of the fitness do not already count, so its
term cannot re-reward (or re-punish) the same probe accuracy or loss twice, and it judges the
seed design the same way as every candidate (the seed's judge term is measured, not a flat 0.5):

* **performance** — the health of the runs, not their level: 5.5 for runs that finished, 2 for a
  run that failed or was stopped; with several seeds on both sides, up to ±2 for a seed-to-seed
  spread of the probe mean below/above the seed design's (a design that is reliably as good is
  worth more than one that is good on one seed).
* **innovation** — structural distance to the nearest known design: the archive's designs and the
  reference mixers of the literature (never the design itself; the seed, itself a reference
  mixer, against the other reference mixers, so a one-gene tweak of the seed scores less
  innovation than the seed). For a genome (built-in
  researcher) the fraction of differing genes; for free code the Jaccard distance between the
  sets of names the code calls (an "operator trace" of its forward pass). 1 + 9·min(1, d/0.3).
* **complexity** — measured cost relative to the seed design at the same scale: mixer parameters
  and speed (the inverse CPU seconds of the evaluation, which does the same steps for every
  design; tokens/s of the LM run only where CPU seconds are missing).
  5.5 + 2.25·(log2(params_seed/params) + speed_term(speed/speed_seed)), clipped to 1–10, where
  speed_term is log2 with ratios within x1.25 of the seed's (timing noise) counted as equal.

``LLMJudge`` asks a chat model and falls back to the rubric when the server is unavailable.
"""

from __future__ import annotations

import ast
import math
import time
from typing import Any, Iterable

from agents import prompts
from agents.fitness import s_judge
from agents.llm import CallRecorder, ChatBackend, LLMError
from agents.llm_session import RoleSession, fallback

__all__ = ["BuiltinJudge", "LLMJudge", "genome_distance", "code_trace", "trace_distance", "known_designs"]

#: A structural distance of this much (30% of the genes) or more is full innovation (10).
INNOVATION_SPAN = 0.3


def _clamp1(v: float) -> float:
    """Clip to 1–10, one decimal (the rubric is continuous: a rounding step would hide ±0.5)."""
    return round(max(1.0, min(10.0, float(v))), 1)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def genome_distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The fraction of genes (keys of either genome) whose values differ, in [0, 1]."""
    keys = set(a) | set(b)
    if not keys:
        return 0.0
    return sum(1 for k in keys if a.get(k) != b.get(k)) / len(keys)


def code_trace(code: str) -> frozenset[str]:
    """The names a mixer file calls (``ops.delta_rule``, ``F.silu``, ``torch.cumsum``...): a
    structural fingerprint of its computation. Empty for code that does not parse."""
    try:
        tree = ast.parse(code or "")
    except SyntaxError:
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):
                base = f.value.id if isinstance(f.value, ast.Name) else ""
                names.add(f"{base}.{f.attr}" if base else f".{f.attr}")
            elif isinstance(f, ast.Name):
                names.add(f.id)
    return frozenset(names)


def trace_distance(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard distance of two call traces (0 identical, 1 disjoint)."""
    if not a and not b:
        return 0.0
    return 1.0 - len(a & b) / len(a | b)


def known_designs() -> list[dict[str, Any]]:
    """The reference mixers as known designs: ``{id, genome, trace}`` (the literature the
    innovation of every design, the seed's included, is measured against)."""
    out: list[dict[str, Any]] = []
    try:
        from training.mixers import REFERENCE_MIXERS
    except Exception:  # pragma: no cover - training is part of the package
        return out
    genomes: dict[str, Any] = {}
    try:
        from agents.builtin.genome import REFERENCE_GENOMES

        genomes = {k: g.to_dict() for k, g in REFERENCE_GENOMES.items()}
    except ImportError:
        pass
    from pathlib import Path

    for name, path in REFERENCE_MIXERS.items():
        try:
            code = Path(path).read_text(encoding="utf-8")
        except OSError:
            code = ""
        out.append({"id": f"ref:{name}", "genome": genomes.get(name), "trace": code_trace(code)})
    return out


def _design(rec: Any) -> dict[str, Any]:
    return {"id": str(getattr(rec, "id", "")), "genome": getattr(rec, "genome", None),
            "trace": code_trace(getattr(rec, "code", "") or "")}


def _innovation(record: Any, history: Iterable[Any]) -> tuple[float, str]:
    me = _design(record)
    extra = getattr(record, "extra", None) or {}
    same = {me["id"], str(extra.get("measures") or "")} - {""}
    is_seed = "0000" in same
    others = []
    for d in known_designs() + [_design(r) for r in history]:
        if d["id"] in same:
            continue
        if is_seed and d["id"].startswith("ref:") and (d["genome"] == me["genome"] or d["trace"] == me["trace"]):
            continue  # the seed is measured against the other designs of the literature
        if is_seed and not d["id"].startswith("ref:"):
            continue  # ... and not against the experiments descended from it
        others.append(d)
    best: tuple[float, str] | None = None
    for d in others:
        if me["genome"] and d["genome"]:
            dist = genome_distance(me["genome"], d["genome"])
        elif me["trace"] and d["trace"]:
            dist = trace_distance(me["trace"], d["trace"])
        else:
            continue
        if best is None or dist < best[0]:
            best = (dist, d["id"])
    if best is None:
        return 5.5, "no known design to compare with"
    score = 1.0 + 9.0 * min(1.0, best[0] / INNOVATION_SPAN)
    return score, f"structural distance {best[0]:.2f} to the nearest known design {best[1]}"


#: Speed ratios within this factor of the seed's count as equal: CPU seconds of the same work
#: vary by 10-15% between a quiet and a loaded machine (benchmarks/first_result.py: the seed's
#: demo evaluation 25.9 CPU s quiet, 29.1 beside two busy loops), and a loaded machine may make
#: things slower, never different. Beyond it the log-ratio counts from the band's edge on.
SPEED_NOISE = 1.25


def _speed(m: dict[str, Any], prefer_cpu: bool) -> tuple[float | None, str]:
    if prefer_cpu and _num(m.get("cpu_seconds")) and m["cpu_seconds"] > 0:
        return 1.0 / float(m["cpu_seconds"]), "1/CPU s"
    if _num(m.get("tokens_per_s")) and m["tokens_per_s"] > 0:
        return float(m["tokens_per_s"]), "tokens/s"
    return None, ""


def speed_term(ratio: float) -> float:
    """log2 of a speed ratio with the timing-noise band (:data:`SPEED_NOISE`) taken out: 0 within
    it, and outside it the distance from the band's edge, so the term is continuous."""
    x, band = math.log2(ratio), math.log2(SPEED_NOISE)
    return math.copysign(max(0.0, abs(x) - band), x)


def _complexity(m: dict[str, Any], b: dict[str, Any]) -> tuple[float, list[str]]:
    comp, why = 5.5, []
    mp, bp = m.get("mixer_params"), b.get("mixer_params")
    if _num(mp) and _num(bp) and mp > 0 and bp > 0:
        comp += 2.25 * math.log2(bp / mp)
        why.append(f"{int(mp)} mixer parameters vs the seed's {int(bp)}")
    # the same steps on both sides (budgets are work), so CPU seconds compare the designs' cost
    # with the least dependence on the machine's load; wall tokens/s only where CPU time is missing
    both_cpu = all(_num(x.get("cpu_seconds")) and x["cpu_seconds"] > 0 for x in (m, b))
    sm, unit = _speed(m, both_cpu)
    sb, unit_b = _speed(b, both_cpu)
    if sm is not None and sb is not None and unit == unit_b:
        comp += 2.25 * speed_term(sm / sb)
        why.append(f"speed {sm / sb:.2f}x the seed's ({unit}"
                   + (f"; within timing noise, x{SPEED_NOISE:g})" if abs(math.log2(sm / sb)) <= math.log2(SPEED_NOISE) else ")"))
    return comp, why


def _spread(m: dict[str, Any]) -> float | None:
    s = (m.get("spread") or {}).get("probe_mean") if isinstance(m.get("spread"), dict) else None
    if isinstance(s, dict) and _num(s.get("std")) and int(s.get("n") or 0) >= 2:
        return float(s["std"])
    return None


def _performance(m: dict[str, Any], b: dict[str, Any]) -> tuple[float, str]:
    if m.get("status") not in (None, "ok"):
        return 2.0, f"run {m.get('status')}: {m.get('stop_reason') or m.get('error') or ''}".strip()
    perf, why = 5.5, "runs finished"
    sm, sb = _spread(m), _spread(b)
    if sm is not None and sb is not None:
        ratio = (sb + 1e-3) / (sm + 1e-3)
        perf += max(-2.0, min(2.0, 2.0 * math.log2(ratio)))
        why = f"seed-to-seed spread of the probe mean {sm:.3f} vs the seed design's {sb:.3f}"
    return perf, why


class BuiltinJudge:
    """Rule-based scores (no LLM), independent of the loss and score terms (see the module doc)."""

    spec = "builtin"

    def judge(self, record: Any, parent: Any, baseline: dict[str, Any] | None,
              nearest: tuple[str, float] | None = None, param_budget: int | None = None,
              recorder: CallRecorder | None = None, history: Iterable[Any] | None = None) -> dict[str, Any]:
        """``{performance, innovation, complexity, reason, s_judge, judge}`` for ``record``.

        ``baseline``: the seed design's metrics at the same scale (complexity and spread are
        relative to it); ``history``: the archive's records (innovation is the distance to the
        nearest of them or of the reference mixers). ``parent``, ``nearest`` and
        ``param_budget`` are accepted for the judges' common signature and not used: the
        motivation's wording and the parameter budget do not move this judge."""
        t0 = time.perf_counter()
        m = record.metrics or {}
        b = baseline or {}
        perf, why_p = _performance(m, b)
        innov, why_i = _innovation(record, list(history or []))
        comp, why_c = _complexity(m, b)
        reasons = [why_p, why_i] + why_c
        out = {"performance": _clamp1(perf), "innovation": _clamp1(innov), "complexity": _clamp1(comp),
               "reason": "; ".join(r for r in reasons if r) or "rubric defaults", "judge": "builtin"}
        out["s_judge"] = round(s_judge(out["performance"], out["innovation"], out["complexity"]), 6)
        if recorder is not None:
            recorder.record("judge", "builtin", f"judge {record.id}", str(out), time.perf_counter() - t0, None, None)
        return out


class LLMJudge:
    """The Judge backed by a chat model; the rubric for a step when the server is unavailable."""

    def __init__(self, backend: ChatBackend, retries: int = 2, backoff_s: float = 1.0,
                 session: RoleSession | None = None) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.session = session or RoleSession("judge", backend, retries=retries, backoff_s=backoff_s)
        self.fallback = BuiltinJudge()

    def judge(self, record: Any, parent: Any, baseline: dict[str, Any] | None,
              nearest: tuple[str, float] | None, param_budget: int | None = None,
              recorder: CallRecorder | None = None, baselines: dict[str, dict[str, Any]] | None = None,
              history: Iterable[Any] | None = None) -> dict[str, Any]:
        """Ask the model for the three scores; the rubric answers this step when the model cannot
        (server unavailable, reply unusable after its correction round, circuit open)."""
        rec = recorder or CallRecorder()
        pr = prompts.judge_prompt(record, parent, baselines or ({"seed": baseline} if baseline else {}), nearest)

        try:
            # the schema holds each score to an integer from 1 to 10 (checked by chat_json)
            obj = self.session.ask(rec, pr, prompts.JUDGE_SCHEMA)
        except LLMError as exc:
            fallback(rec, "judge", self.spec, exc, "built-in rubric")
            return self.fallback.judge(record, parent, baseline, nearest, param_budget, rec, history=history)
        rec.step("judge", "llm", self.spec)
        out = {k: int(obj[k]) for k in ("performance", "innovation", "complexity")}
        out["reason"] = str(obj.get("reason", ""))
        out["judge"] = self.spec
        out["s_judge"] = round(s_judge(out["performance"], out["innovation"], out["complexity"]), 6)
        return out
