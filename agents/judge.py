"""The Judge: performance, innovation and complexity scores (1–10) that make s_judge (step 8).

``BuiltinJudge`` is a rubric over the metrics: performance from the candidate's probe mean and
loss against the seed baseline, innovation from the distance of its motivation to the nearest
earlier one, complexity from its parameter count against the budget and its speed against the
parent. ``LLMJudge`` asks a chat model and falls back to the rubric when the server is
unavailable.
"""

from __future__ import annotations

import time
from typing import Any

from agents import prompts
from agents.fitness import s_judge
from agents.llm import CallRecorder, ChatBackend, LLMError
from agents.llm_session import RoleSession, fallback

__all__ = ["BuiltinJudge", "LLMJudge"]


def _clamp(v: float) -> int:
    return int(max(1, min(10, round(v))))


class BuiltinJudge:
    """Rule-based scores (no LLM)."""

    spec = "builtin"

    def judge(self, record: Any, parent: Any, baseline: dict[str, Any] | None,
              nearest: tuple[str, float] | None, param_budget: int | None = None,
              recorder: CallRecorder | None = None) -> dict[str, Any]:
        """``{performance, innovation, complexity, reason, s_judge, judge}`` for ``record``."""
        t0 = time.perf_counter()
        m = record.metrics or {}
        b = baseline or {}
        reasons = []
        perf = 5.0
        if m.get("status") not in (None, "ok"):
            perf = 2.0
            reasons.append(f"run {m.get('status')}")
        else:
            pm, pb = m.get("probe_mean"), b.get("probe_mean")
            if isinstance(pm, (int, float)) and isinstance(pb, (int, float)):
                perf += 25.0 * (pm - pb)  # +0.2 probe mean over the seed -> +5 points
                reasons.append(f"probe mean {pm:.3f} vs seed {pb:.3f}")
            lm, lb = m.get("val_loss"), b.get("val_loss")
            if isinstance(lm, (int, float)) and isinstance(lb, (int, float)) and lb > 0:
                perf += 20.0 * (lb - lm) / lb
                reasons.append(f"loss {lm:.3f} vs seed {lb:.3f}")
        if nearest is not None:
            innov = 1.0 + 9.0 * max(0.0, min(1.0, (1.0 - nearest[1]) / 0.6))
            reasons.append(f"nearest earlier idea {nearest[0]} at similarity {nearest[1]:.2f}")
        else:
            innov = 6.0
        comp = 7.0
        mp = m.get("mixer_params")
        if isinstance(mp, (int, float)) and param_budget:
            comp += 3.0 * (1.0 - 2.0 * mp / param_budget)  # half the budget -> neutral
            reasons.append(f"{int(mp)} mixer parameters of {param_budget}")
        pt = ((parent.metrics or {}).get("tokens_per_s") if parent is not None else None)
        if isinstance(m.get("tokens_per_s"), (int, float)) and isinstance(pt, (int, float)) and pt > 0:
            comp += 3.0 * (m["tokens_per_s"] / pt - 1.0)
        out = {"performance": _clamp(perf), "innovation": _clamp(innov), "complexity": _clamp(comp),
               "reason": "; ".join(reasons) or "rubric defaults", "judge": "builtin"}
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
              recorder: CallRecorder | None = None, baselines: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Ask the model for the three scores; the rubric answers this step when the model cannot
        (server unavailable, reply unusable after its correction round, circuit open)."""
        rec = recorder or CallRecorder()
        pr = prompts.judge_prompt(record, parent, baselines or ({"seed": baseline} if baseline else {}), nearest)

        def validate(obj: dict[str, Any]) -> str | None:
            for k in ("performance", "innovation", "complexity"):
                v = obj.get(k)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 10:
                    return f"{k} must be a number from 1 to 10 (got {v!r})"
            return None

        try:
            obj = self.session.ask(rec, pr, prompts.JUDGE_SCHEMA, validate=validate)
        except LLMError as exc:
            fallback(rec, "judge", self.spec, exc, "built-in rubric")
            return self.fallback.judge(record, parent, baseline, nearest, param_budget, rec)
        rec.step("judge", "llm", self.spec)
        out = {k: _clamp(float(obj[k])) for k in ("performance", "innovation", "complexity")}
        out["reason"] = str(obj.get("reason", ""))
        out["judge"] = self.spec
        out["s_judge"] = round(s_judge(out["performance"], out["innovation"], out["complexity"]), 6)
        return out
