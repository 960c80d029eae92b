"""The fitness of an experiment (docs/ARCHITECTURE.md step 8).

fitness = (s_loss + s_score + s_judge) / 3, each in [0, 1]; with L the validation loss, B the
benchmark score (at a scale with lm-eval tasks the mean lm-eval task score, ``benchmark``; else the
probe mean) and L0, B0 the seed baseline's at the same scale:

* s_loss  = σ(6·clip((L0 − L)/(0.1·L0), −1, 1))
* s_score = σ(6·clip((B − B0)/(0.1·B0), −1, 1))
* s_judge = (w − 1)/9, w = 0.3·performance + 0.25·innovation + 0.45·complexity (each 1–10)

A component that cannot be measured counts 0.5 and is marked unmeasured. A loss more than 10%
below the baseline's (or more than the loss rule's tolerance calibrated on the references, when
the evaluation recorded one: :func:`leak_fraction`) is a suspected leak of future tokens: s_loss
is then not credited (0.5, unmeasured) and ``leak_suspected`` is set.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["leak_fraction", "benchmark_of", "sigmoid", "s_loss", "s_score", "s_judge", "judge_weighted", "compute_fitness", "LEAK_FRACTION"]

#: A loss this fraction below the seed baseline's is treated as a leak, not a win.
LEAK_FRACTION = 0.10


def sigmoid(x: float) -> float:
    """The logistic function."""
    return 1.0 / (1.0 + math.exp(-x))


def _clip(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return max(lo, min(hi, x))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def s_loss(loss: float, loss0: float) -> float:
    """σ(6·clip((L0 − L)/(0.1·L0), −1, 1))."""
    return sigmoid(6.0 * _clip((loss0 - loss) / (0.1 * loss0)))


def s_score(score: float, score0: float) -> float:
    """σ(6·clip((B − B0)/(0.1·B0), −1, 1)); with B0 = 0 the sign of B decides (clip ±1)."""
    if score0 == 0:
        return sigmoid(6.0 * _clip(math.copysign(1.0, score) if score else 0.0))
    return sigmoid(6.0 * _clip((score - score0) / (0.1 * score0)))


def judge_weighted(performance: float, innovation: float, complexity: float) -> float:
    """w = 0.3·performance + 0.25·innovation + 0.45·complexity (each clipped to 1–10)."""
    p, i, c = (max(1.0, min(10.0, float(v))) for v in (performance, innovation, complexity))
    return 0.3 * p + 0.25 * i + 0.45 * c


def s_judge(performance: float, innovation: float, complexity: float) -> float:
    """(w − 1)/9 in [0, 1]."""
    return (judge_weighted(performance, innovation, complexity) - 1.0) / 9.0


def benchmark_of(metrics: dict[str, Any] | None) -> float | None:
    """The benchmark term's input of a metrics dict: ``benchmark`` (the mean lm-eval task score)
    when its ``benchmark_kind`` is ``lm_eval``, else ``probe_mean``."""
    m = metrics or {}
    return m.get("benchmark") if m.get("benchmark_kind") == "lm_eval" else m.get("probe_mean")


def leak_fraction(metrics: dict[str, Any] | None) -> float:
    """How far below the seed's a validation loss may be before it counts as a suspected leak:
    the loss rule's tolerance calibrated on the lab's references, as the evaluation recorded it
    (``metrics["leak_tolerance"]``, written by the sandbox harness from the loop's references;
    see ``training.leak_monitor``), never below ``LEAK_FRACTION``; ``LEAK_FRACTION`` without one."""
    tol = (metrics or {}).get("leak_tolerance")
    return max(LEAK_FRACTION, float(tol)) if _finite(tol) and float(tol) < 1.0 else LEAK_FRACTION


def compute_fitness(
    metrics: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    judge: dict[str, Any] | None,
) -> tuple[float, dict[str, Any]]:
    """``(fitness, components)`` for an experiment.

    ``metrics``/``baseline``: evaluation dicts (``val_loss``, ``probe_mean``) of the candidate and
    of the seed baseline at the same scale; ``judge``: ``{performance, innovation, complexity}``.
    ``components`` = ``{s_loss, s_score, s_judge, measured: {s_loss, s_score, s_judge: bool},
    leak_suspected: bool}``.
    """
    m = metrics or {}
    b = baseline or {}
    measured = {"s_loss": False, "s_score": False, "s_judge": False}
    leak = False
    sl = ss = sj = 0.5
    L, L0 = m.get("val_loss"), b.get("val_loss")
    frac = leak_fraction(m)
    if _finite(L) and _finite(L0) and L0 > 0:
        if L < (1.0 - frac) * L0:
            leak = True
        else:
            sl = s_loss(L, L0)
            measured["s_loss"] = True
    B, B0 = benchmark_of(m), benchmark_of(b)
    if (m.get("benchmark_kind") == "lm_eval") != (b.get("benchmark_kind") == "lm_eval"):
        B = B0 = None  # an lm-eval mean is never compared with a probe mean
    if _finite(B) and _finite(B0) and B0 >= 0:
        ss = s_score(B, B0)
        measured["s_score"] = True
    if judge and all(_finite(judge.get(k)) for k in ("performance", "innovation", "complexity")):
        sj = s_judge(judge["performance"], judge["innovation"], judge["complexity"])
        measured["s_judge"] = True
    fitness = (sl + ss + sj) / 3.0
    comps = {"s_loss": round(sl, 6), "s_score": round(ss, 6), "s_judge": round(sj, 6),
             "measured": measured, "leak_suspected": leak, "leak_fraction": frac}
    return round(fitness, 6), comps
