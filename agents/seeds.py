"""Multi-seed evaluation of one design: per-seed metrics, their mean and spread, and the fitness
with its interval.

A design evaluated on seeds ``s1..sn`` has one metrics dict per seed (``training.evaluate``'s
contract). :func:`combine` turns them into the design's metrics dict: the first seed's dict
(loss curve, log details) with the headline numbers replaced by their means over seeds, plus

* ``seeds``: ``[{seed, status, val_loss, val_bpb, train_loss, probe_mean, probes, tokens_per_s,
  cpu_seconds, wall_seconds, mixer_params, stop_reason, error, leak_tolerance, checkpoint,
  loss_curve}, ...]`` in evaluation order (``checkpoint``: the LM run's half-way checkpoint loss,
  ``training.early_stop``; ``loss_curve`` only where there is one);
* ``spread``: ``{metric: {n, mean, std, interval: [lo, hi], confidence, method}}`` for
  ``val_loss, val_bpb, probe_mean, tokens_per_s`` and each probe (``probes.<name>``);
* ``n_seeds``.

A one-seed design gets the same keys (``seeds`` with one entry), so readers need no special case.

:func:`seed_fitness` scores each seed against the yardstick (the seed design's metrics) with
``agents.fitness.compute_fitness``; the design's fitness is the mean over seeds and its interval
the t interval of those values (:mod:`agents.stats`).
"""

from __future__ import annotations

from typing import Any, Callable

from agents import stats

__all__ = ["SEED_KEYS", "combine", "per_seed", "seed_fitness", "fitness_of", "spread_of", "screen", "screen_of", "values_by_seed", "versus"]

#: Per-seed values kept in ``metrics.seeds``.
SEED_KEYS = ("seed", "eval_version", "status", "val_loss", "val_bpb", "train_loss", "probe_mean", "probes", "tokens_per_s",
             "cpu_seconds", "wall_seconds", "mixer_params", "stop_reason", "error", "leak_tolerance", "checkpoint")
#: kept per seed at a scale with lm-eval tasks (the benchmark term and the per-task scores)
LM_EVAL_KEYS = ("benchmark_kind", "benchmark", "lm_eval")
_MEAN_KEYS = ("val_loss", "val_bpb", "train_loss", "probe_mean", "benchmark", "tokens_per_s", "cpu_seconds", "wall_seconds",
              "train_seconds")
_SPREAD_KEYS = ("val_loss", "val_bpb", "probe_mean", "benchmark", "tokens_per_s")


def _entry(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: m.get(k) for k in SEED_KEYS}
    out["probes"] = dict(m.get("probes") or {})
    if m.get("loss_curve"):  # per seed: the seed design's curves are early stopping's fallback reference
        out["loss_curve"] = m["loss_curve"]
    if m.get("benchmark_kind") == "lm_eval":
        out.update({k: m.get(k) for k in LM_EVAL_KEYS})
    return out


def per_seed(metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The per-seed entries of a design's metrics (``metrics.seeds``; for a record made before
    multi-seed evaluation, its one run as the only entry). Empty when never evaluated."""
    m = metrics or {}
    seeds = m.get("seeds")
    if isinstance(seeds, list) and seeds and all(isinstance(s, dict) for s in seeds):
        return seeds
    if not m or m.get("status") is None:
        return []
    return [_entry(m)]


def spread_of(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{metric: SeedSummary.to_dict()}`` of the per-seed entries (metrics measured on none of
    them are left out)."""
    out: dict[str, dict[str, Any]] = {}
    for key in _SPREAD_KEYS:
        s = stats.summarize(e.get(key) for e in entries)
        if s is not None:
            out[key] = s.to_dict()
    names: list[str] = []
    for e in entries:
        for k in e.get("probes") or {}:
            if k not in names:
                names.append(k)
    for name in names:
        s = stats.summarize((e.get("probes") or {}).get(name) for e in entries)
        if s is not None:
            out[f"probes.{name}"] = s.to_dict()
    return out


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The design's metrics dict from one metrics dict per seed (see the module doc). The status
    is ``ok`` only if every run's is; otherwise the first bad run's status, stop reason and error."""
    if not runs:
        raise ValueError("combine needs at least one run")
    first = dict(runs[0])
    entries = [_entry(r) for r in runs]
    out = dict(first)
    for key in _MEAN_KEYS:
        if key == "benchmark" and first.get("benchmark_kind") != "lm_eval":
            continue
        s = stats.summarize(r.get(key) for r in runs)
        out[key] = round(s.mean, 6) if s is not None else first.get(key)
    spread = spread_of(entries)
    probes = dict(first.get("probes") or {})
    for name in probes:
        s = spread.get(f"probes.{name}")
        if s is not None:
            probes[name] = s["mean"]
    out["probes"] = probes
    bad = [r for r in runs if r.get("status") != "ok"]
    # one incomplete seed makes the design's measurement incomplete (no yardstick, no fitness)
    out["partial"] = any(bool(r.get("partial")) or r.get("status") != "ok" for r in runs)
    if bad:
        out["status"] = bad[0].get("status")
        out["stop_reason"] = bad[0].get("stop_reason")
        out["error"] = bad[0].get("error")
    out["seeds"] = entries
    out["spread"] = spread
    out["n_seeds"] = len(entries)
    return out


def seed_fitness(metrics: dict[str, Any] | None, baseline: dict[str, Any] | None, judge: dict[str, Any] | None,
                 score: Callable[..., tuple[float, dict[str, Any]]] | None = None) -> dict[int, float]:
    """``{seed: fitness}`` of each successful seed of ``metrics`` against ``baseline`` (the seed
    design's metrics: their means when it has several seeds). ``score`` defaults to
    ``agents.fitness.compute_fitness``."""
    if score is None:
        from agents.fitness import compute_fitness as score
    out: dict[int, float] = {}
    for i, e in enumerate(per_seed(metrics)):
        if e.get("status") != "ok":
            continue
        seed = e.get("seed")
        f, _ = score(e, baseline, judge)
        out[int(seed) if isinstance(seed, int) else i] = f
    return out


def fitness_of(metrics: dict[str, Any] | None, baseline: dict[str, Any] | None, judge: dict[str, Any] | None,
               score: Callable[..., tuple[float, dict[str, Any]]] | None = None
               ) -> tuple[float | None, dict[str, Any], list[float] | None, dict[int, float]]:
    """``(fitness, components, interval, per_seed)`` of a design: the fitness is the mean of the
    per-seed fitness values (None when no seed succeeded), ``components`` those of the combined
    metrics (with ``n_seeds``), ``interval`` ``[lo, hi]`` (None for one seed)."""
    if score is None:
        from agents.fitness import compute_fitness as score
    _, comps = score(metrics, baseline, judge)
    fs = seed_fitness(metrics, baseline, judge, score)
    s = stats.summarize(fs.values())
    comps = dict(comps)
    comps["n_seeds"] = len(fs)
    if s is None:
        return None, comps, None, fs
    interval = [round(s.lo, 6), round(s.hi, 6)] if s.n >= 2 else None
    return round(s.mean, 6), comps, interval, fs


def screen(metrics: dict[str, Any] | None, baseline: dict[str, Any] | None,
           score: Callable[..., tuple[float, dict[str, Any]]] | None = None) -> float | None:
    """The measured part of the fitness, ``(s_loss + s_score) / 2`` of ``metrics`` against the
    yardstick: what successive halving ranks a one-seed result by (the judge term is decided
    later and does not vary with the seed). None when neither term was measured."""
    if score is None:
        from agents.fitness import compute_fitness as score
    if not metrics or metrics.get("status") != "ok":
        return None
    _, comps = score(metrics, baseline, None)
    return screen_of(comps)


def screen_of(components: dict[str, Any] | None) -> float | None:
    """``(s_loss + s_score) / 2`` from stored fitness components (None if neither measured)."""
    c = components or {}
    measured = c.get("measured") or {}
    if not (measured.get("s_loss") or measured.get("s_score")):
        return None
    try:
        return (float(c["s_loss"]) + float(c["s_score"])) / 2.0
    except (KeyError, TypeError, ValueError):
        return None


def values_by_seed(metrics: dict[str, Any] | None, key: str, sign: float = 1.0) -> dict[int, float]:
    """``{seed: sign * value}`` of one metric over a design's successful seeds."""
    out: dict[int, float] = {}
    for i, e in enumerate(per_seed(metrics)):
        v = e.get(key)
        if e.get("status") == "ok" and isinstance(v, (int, float)) and not isinstance(v, bool):
            seed = e.get("seed")
            out[int(seed) if isinstance(seed, int) else i] = sign * float(v)
    return out


def versus(metrics: dict[str, Any] | None, reference: dict[str, Any] | None, key: str,
           higher_is_better: bool = True, what: str = "the seed") -> stats.Verdict:
    """The promotion rule on one metric (``probe_mean``, ``val_loss``...) of a design against a
    reference design (the seed's metrics), seed by seed."""
    sign = 1.0 if higher_is_better else -1.0
    return stats.promote(values_by_seed(metrics, key, sign), values_by_seed(reference, key, sign), what=what)
