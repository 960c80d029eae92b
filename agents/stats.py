"""Statistics of noisy evaluations: per-seed values, intervals, the promotion rule and the
successive-halving schedule.

One evaluation of a design is one training run on one seed; its metrics (and so its fitness) move
with the seed. This module turns per-seed values into a :class:`SeedSummary` (mean, sample std
and a two-sided t interval over seeds, or a percentile bootstrap interval), and decides with
:func:`promote` whether a design may replace the incumbent ``best``:

* a design measured on fewer than 2 seeds is never promoted;
* it is promoted when the lower end of its fitness interval lies above the incumbent's mean, or
  when its per-seed differences against the incumbent on the seeds both were measured on
  (paired) have an interval whose lower end is above 0;
* otherwise it is "below best" when its interval lies below the incumbent's, or when the paired
  differences have an interval whose upper end is below 0 (the mirror of the paired win), and
  "tied with best (within noise)" else.

The same rule answers "does this design beat the seed?" (:func:`beats`).

Successive halving (:func:`needs_more_seeds`, :func:`design_seeds`): every candidate is
evaluated on one seed (rung 0); one whose rung-0 fitness would enter the lab's top ``k`` is
evaluated on more seeds (3 in total by default) before it may enter it. The seeds are the lab's
base seed and the next ones (``base, base+1, base+2``), the same for every design, so two
designs measured on 3 seeds can be compared seed by seed (common random numbers make the paired
test much sharper than comparing two independent intervals).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "SeedSummary",
    "Verdict",
    "t_quantile",
    "summarize",
    "t_interval",
    "bootstrap_interval",
    "paired_differences",
    "promote",
    "beats",
    "needs_more_seeds",
    "design_seeds",
    "format_spread",
    "CONFIDENCE",
    "TOP_K",
    "SEEDS",
]

#: The confidence of every interval and of the promotion rule (two-sided).
CONFIDENCE = 0.90
#: Successive halving: a rung-0 fitness that would enter the top ``TOP_K`` earns more seeds.
TOP_K = 5
#: Seeds of a design that earned them (and of the seed design and the reference baselines).
SEEDS = 3

# Upper quantiles t_{1-(1-c)/2}(df) of Student's t for two-sided confidence c; the last entry is
# the normal quantile (df > 30).
_T_TABLE: dict[float, tuple[float, ...]] = {
    0.90: (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771,
           1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706,
           1.703, 1.701, 1.699, 1.697, 1.645),
    0.95: (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
           2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
           2.052, 2.048, 2.045, 2.042, 1.960),
}


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t critical value for ``df`` degrees of freedom (``df`` >= 1) at
    ``confidence`` (0.90 or 0.95)."""
    table = _T_TABLE.get(round(float(confidence), 4))
    if table is None:
        raise ValueError(f"confidence {confidence!r} is not one of {', '.join(str(c) for c in _T_TABLE)}")
    if int(df) < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (got {df})")
    return table[min(int(df), 31) - 1]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _clean(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if _finite(v)]


@dataclass(frozen=True)
class SeedSummary:
    """Per-seed values of one quantity and their summary.

    ``n``: the number of finite values; ``std``: the sample standard deviation (0 for one value);
    ``lo``/``hi``: the interval at ``confidence`` (equal to the mean for one value: a single seed
    has no measured spread, which is why such a design is never promoted).
    """

    values: tuple[float, ...]
    mean: float
    std: float
    lo: float
    hi: float
    confidence: float = CONFIDENCE
    method: str = "t"

    @property
    def n(self) -> int:
        """The number of seeds summarised."""
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict ``{n, mean, std, interval: [lo, hi], confidence, method}``."""
        return {"n": self.n, "mean": round(self.mean, 6), "std": round(self.std, 6),
                "interval": [round(self.lo, 6), round(self.hi, 6)], "confidence": self.confidence,
                "method": self.method}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t interval ``mean ± t·std/√n`` of the finite ``values`` (a point for one value);
    ``ValueError`` for none."""
    vals = _clean(values)
    if not vals:
        raise ValueError("an interval needs at least one finite value")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = t_quantile(len(vals) - 1, confidence) * sd / math.sqrt(len(vals))
    return mean - half, mean + half


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of ``values`` (deterministic for a given
    ``seed``). With 3 seeds it is narrower than the t interval (it cannot see tails it never
    sampled); the promotion rule uses the t interval."""
    vals = _clean(values)
    if not vals:
        raise ValueError("an interval needs at least one finite value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} is not in (0, 1)")
    rng = random.Random(seed)
    n = len(vals)
    means = sorted(sum(rng.choice(vals) for _ in range(n)) / n for _ in range(max(1, int(n_boot))))
    a = (1.0 - confidence) / 2.0
    lo = means[int(math.floor(a * (len(means) - 1)))]
    hi = means[int(math.ceil((1.0 - a) * (len(means) - 1)))]
    return lo, hi


def summarize(values: Iterable[Any], confidence: float = CONFIDENCE, method: str = "t") -> SeedSummary | None:
    """The :class:`SeedSummary` of the finite ``values`` (``method``: ``t`` or ``bootstrap``);
    None when there is none."""
    vals = tuple(_clean(values))
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    if method == "t":
        lo, hi = t_interval(vals, confidence)
    elif method == "bootstrap":
        lo, hi = bootstrap_interval(vals, confidence)
    else:
        raise ValueError(f"method {method!r} is not t or bootstrap")
    return SeedSummary(vals, mean, sd, lo, hi, confidence, method)


def paired_differences(candidate: Mapping[int, float], incumbent: Mapping[int, float]) -> list[float]:
    """``candidate[s] - incumbent[s]`` for every seed ``s`` both have a finite value for (in
    seed order)."""
    return [float(candidate[s]) - float(incumbent[s]) for s in sorted(set(candidate) & set(incumbent))
            if _finite(candidate[s]) and _finite(incumbent[s])]


@dataclass(frozen=True)
class Verdict:
    """The promotion rule's answer.

    ``promoted``: the candidate replaces the incumbent. ``outcome``: ``promoted``, ``tied``
    (within noise), ``below``, ``single_seed`` or ``unmeasured``. ``rule``: which test promoted
    it (``interval`` or ``paired``; empty otherwise). ``text``: one line for people.
    """

    promoted: bool
    outcome: str
    rule: str = ""
    text: str = ""
    paired: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the verdict."""
        return {"promoted": self.promoted, "outcome": self.outcome, "rule": self.rule, "text": self.text,
                "paired": [round(d, 6) for d in self.paired]}


def _per_seed(values: Mapping[int, float] | Sequence[float]) -> dict[int, float]:
    if isinstance(values, Mapping):
        return {int(k): float(v) for k, v in values.items() if _finite(v)}
    return {i: float(v) for i, v in enumerate(values) if _finite(v)}


def promote(candidate: Mapping[int, float] | Sequence[float],
            incumbent: Mapping[int, float] | Sequence[float] | None,
            confidence: float = CONFIDENCE, min_seeds: int = 2, what: str = "best") -> Verdict:
    """May ``candidate`` replace ``incumbent``? Both are per-seed values (``{seed: value}``, or a
    list for values without seeds: then no pairing). Higher is better. See the module doc; with no
    incumbent a candidate with ``min_seeds`` seeds is promoted. ``what`` names the incumbent in
    ``text`` (``best``, ``the seed``)."""
    cand = _per_seed(candidate)
    if not cand:
        return Verdict(False, "unmeasured", text="not measured")
    cs = summarize(cand.values(), confidence)
    assert cs is not None
    if cs.n < min_seeds:
        return Verdict(False, "single_seed", text=f"measured on {cs.n} seed; {min_seeds} are needed to compare")
    inc = _per_seed(incumbent) if incumbent is not None else {}
    if not inc:
        return Verdict(True, "promoted", "interval", f"first design measured on {cs.n} seeds")
    ins = summarize(inc.values(), confidence)
    assert ins is not None
    if cs.lo > ins.mean:
        return Verdict(True, "promoted", "interval",
                       f"interval [{cs.lo:.4f}, {cs.hi:.4f}] above {what}'s mean {ins.mean:.4f}")
    diffs = paired_differences(cand, inc) if isinstance(candidate, Mapping) and isinstance(incumbent, Mapping) else []
    if len(diffs) >= min_seeds:
        lo, _ = t_interval(diffs, confidence)
        if lo > 0:
            return Verdict(True, "promoted", "paired",
                           f"ahead of {what} on each of {len(diffs)} shared seeds (paired lower bound {lo:+.4f})",
                           diffs)
    if cs.hi < ins.lo or (cs.hi < ins.mean and cs.mean < ins.lo):
        return Verdict(False, "below", text=f"below {what} ({cs.mean:.4f} vs {ins.mean:.4f})", paired=diffs)
    if len(diffs) >= min_seeds and t_interval(diffs, confidence)[1] < 0:  # behind on every shared seed
        return Verdict(False, "below", text=(f"below {what} on each of {len(diffs)} shared seeds "
                                             f"({cs.mean:.4f} vs {ins.mean:.4f})"), paired=diffs)
    return Verdict(False, "tied", text=f"tied with {what} (within noise): {cs.mean:.4f} vs {ins.mean:.4f}",
                   paired=diffs)


def beats(candidate: Mapping[int, float] | Sequence[float], reference: Mapping[int, float] | Sequence[float],
          confidence: float = CONFIDENCE) -> Verdict:
    """The promotion rule against a reference design (e.g. "beats the seed")."""
    return promote(candidate, reference, confidence, what="the seed")


def needs_more_seeds(rung0: float | None, top: Sequence[float | None], k: int = TOP_K) -> bool:
    """Successive halving: whether a design whose one-seed fitness is ``rung0`` earns more seeds.
    ``top``: the fitness (mean) of the lab's designs already measured on several seeds. True when
    fewer than ``k`` such designs exist, or ``rung0`` exceeds the ``k``-th best of them."""
    if not _finite(rung0):
        return False
    ranked = sorted((float(f) for f in top if _finite(f)), reverse=True)
    if len(ranked) < k:
        return True
    return float(rung0) > ranked[k - 1]


def design_seeds(base: int, n: int = SEEDS) -> list[int]:
    """The seeds of a design evaluated ``n`` times: ``base, base+1, ...`` (the same for every
    design, the seed design and the reference baselines, so per-seed differences pair)."""
    if n < 1:
        raise ValueError(f"a design needs at least one seed (got {n})")
    return [int(base) + i for i in range(int(n))]


def format_spread(mean: float | None, std: float | None, n: int | None, digits: int = 3) -> str:
    """``0.612 ± 0.021 (3 seeds)``; ``0.612 (1 seed)``; ``-`` when unmeasured."""
    if not _finite(mean):
        return "-"
    n = int(n or 1)
    if n < 2 or not _finite(std):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({n} seeds)"
