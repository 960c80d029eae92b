"""The yardstick: the seed's complete measurement at the lab's scale, against which every
fitness is computed (agents.fitness), and the re-scoring of a lab when it changes.

Rules:

- no score without a yardstick: a missing, failed or partial seed measurement scores nothing
  (:func:`make_yardstick` returns None and :func:`missing_reason` says why);
- only complete metrics are scored: a failed, too_slow, rejected or partial experiment has no
  fitness (None), never a neutral 0.5-ish number;
- fitness is derived data: each record stores its metrics and the yardstick version (a hash of
  the seed's score-relevant metrics, the scale and the fitness formula's version);
  :func:`rescore_lab` recomputes every record from its metrics and moves ``best``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.fitness import compute_fitness

__all__ = ["FITNESS_VERSION", "Yardstick", "baseline_key", "baselines_path", "load_baselines", "make_yardstick",
           "missing_reason", "yardstick_version", "is_complete", "score", "rescore_lab", "lab_yardstick",
           "replay_promotions"]

#: Bump when the fitness formula changes: every yardstick version changes with it.
FITNESS_VERSION = "2"
#: Record statuses that may carry a fitness.
SCORED_STATUSES = ("accepted",)


def baseline_key(scale: Any) -> str:
    """The cache name of a scale's baselines: its name, plus a hash when it is a custom Scale."""
    if isinstance(scale, str):
        return scale
    from training.scales import SCALES

    if SCALES.get(scale.name) == scale:
        return scale.name
    digest = hashlib.sha1(repr(scale).encode()).hexdigest()[:8]
    return f"{scale.name}-{digest}"


def _scale_name(scale: Any) -> str:
    return scale if isinstance(scale, str) else scale.name


def baselines_path(lab_path: str | Path, scale: Any) -> Path:
    """``lab/baselines/<key>.json``: the seed and reference baselines measured at ``scale``."""
    return Path(lab_path) / "baselines" / f"{baseline_key(scale)}.json"


def load_baselines(lab_path: str | Path, scale: Any) -> dict[str, dict[str, Any]]:
    """The baselines measured so far at ``scale`` (``{mixer name: metrics}``; {} if none)."""
    p = baselines_path(lab_path, scale)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_complete(metrics: dict[str, Any] | None) -> bool:
    """Whether ``metrics`` is a complete evaluation (usable as a yardstick or fitness input)."""
    from training.evaluate import is_partial

    return bool(metrics) and not is_partial(metrics)


def _score_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    def r(v: Any) -> Any:
        return round(float(v), 9) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else v

    return {"val_loss": r(metrics.get("val_loss")), "probe_mean": r(metrics.get("probe_mean")),
            "probes": {k: r(v) for k, v in sorted((metrics.get("probes") or {}).items())},
            "seed": metrics.get("seed"), "scale": metrics.get("scale"),
            **({"benchmark": r(metrics.get("benchmark"))} if metrics.get("benchmark_kind") == "lm_eval" else {})}


def yardstick_version(seed_metrics: dict[str, Any], scale: Any) -> str:
    """A short hash of the seed's score-relevant metrics, the scale and the fitness formula."""
    blob = json.dumps({"scale": baseline_key(scale), "fitness": FITNESS_VERSION, "seed": _score_fields(seed_metrics)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Yardstick:
    """The seed's complete metrics at ``scale`` (its baseline key) and their ``version``."""

    scale: str
    metrics: dict[str, Any]
    version: str

    @property
    def scale_name(self) -> str:
        """The scale's name (what records and metrics carry)."""
        return str(self.metrics.get("scale") or self.scale.split("-")[0])


def missing_reason(seed_metrics: dict[str, Any] | None, scale: Any) -> str | None:
    """Why ``seed_metrics`` is no yardstick at ``scale`` (None when it is one)."""
    key = baseline_key(scale)
    if not seed_metrics:
        return f"the seed (DeltaNet) has not been measured at scale {key} yet"
    status = seed_metrics.get("status")
    if status != "ok":
        why = seed_metrics.get("stop_reason") or seed_metrics.get("error") or ""
        return f"the seed's measurement at scale {key} ended {status}" + (f": {why}" if why else "")
    if not is_complete(seed_metrics):
        return f"the seed's measurement at scale {key} is partial"
    if seed_metrics.get("scale") not in (None, _scale_name(scale)):
        return f"the seed was measured at scale {seed_metrics.get('scale')}, not {key}"
    from training.evaluate import EVAL_VERSION, eval_version

    if eval_version(seed_metrics) != EVAL_VERSION:
        return (f"the seed's measurement at scale {key} was made under evaluation protocol "
                f"{eval_version(seed_metrics)}; this version evaluates under protocol {EVAL_VERSION} "
                "(training.evaluate.EVAL_VERSION): it is measured again")
    return None


def make_yardstick(seed_metrics: dict[str, Any] | None, scale: Any) -> Yardstick | None:
    """The yardstick from the seed's metrics at ``scale``; None when missing, failed or partial."""
    if missing_reason(seed_metrics, scale) is not None:
        return None
    assert seed_metrics is not None
    return Yardstick(baseline_key(scale), dict(seed_metrics), yardstick_version(seed_metrics, scale))


def lab_yardstick(lab_path: str | Path, scale: Any) -> tuple[Yardstick | None, str | None]:
    """``(yardstick, None)`` from the lab's measured seed at ``scale``, or ``(None, reason)``."""
    from training.mixers import SEED_MIXER

    seed = load_baselines(lab_path, scale).get(SEED_MIXER)
    why = missing_reason(seed, scale)
    return (make_yardstick(seed, scale), None) if why is None else (None, why)


def score(metrics: dict[str, Any] | None, judge: dict[str, Any] | None, yardstick: Yardstick | None,
          status: str = "accepted", missing: str | None = None) -> tuple[float | None, dict[str, Any]]:
    """``(fitness, components)`` of an experiment against ``yardstick``.

    Fitness is None (with ``components["unscored"]`` saying why) when there is no yardstick
    (``missing``: the reason), the experiment's status is not accepted, its metrics are partial
    or not ``ok``, or they were measured at another scale. Otherwise
    :func:`agents.fitness.compute_fitness` of each seed against the seed's (mean) metrics, the
    fitness being their mean (``agents.seeds.fitness_of``), with ``judge`` (the judge's verdict,
    kept in ``components["judge"]``), ``components["yardstick"]``, ``["fitness_interval"]``
    ([lo, hi] over seeds, None for one seed) and ``["fitness_seeds"]`` ({seed: fitness})."""
    base = {"judge": judge}
    if yardstick is None:
        return None, {**base, "unscored": missing or "no yardstick: the seed has not been measured at this scale"}
    base["yardstick"] = yardstick.version
    if status not in SCORED_STATUSES:
        return None, {**base, "unscored": f"status {status}"}
    m = metrics or {}
    if not is_complete(m):
        st = m.get("status") or "unmeasured"
        return None, {**base, "unscored": f"metrics are {'partial' if st == 'ok' else st}"}
    if m.get("scale") not in (None, yardstick.scale_name):
        return None, {**base, "unscored": f"measured at scale {m.get('scale')}; the yardstick is at {yardstick.scale}"}
    from training.evaluate import eval_version

    if eval_version(m) != eval_version(yardstick.metrics):
        return None, {**base, "unscored": (f"measured under evaluation protocol {eval_version(m)}; the yardstick "
                                           f"under {eval_version(yardstick.metrics)}")}
    from agents.seeds import fitness_of

    # a design measured on several seeds: the mean of its per-seed fitness values, with the
    # interval over seeds (agents.stats) and each seed's value, kept with the components so that
    # a re-score carries them too
    fitness, comps, interval, per_seed = fitness_of(m, yardstick.metrics, judge, compute_fitness)
    comps.update(base)
    comps["fitness_interval"] = interval
    comps["fitness_seeds"] = {str(k): v for k, v in per_seed.items()}
    return fitness, comps


def rescore_lab(lab: Any, scale: Any = None) -> dict[str, Any]:
    """Re-score every experiment of ``lab`` from its stored metrics against the lab's current
    yardstick at ``scale`` (default: the lab's ``[loop] scale``), store the result as derived
    data (``lab.apply_scores``) and move ``best``. Without a yardstick every fitness becomes
    None and ``reason`` says why. Returns ``{"yardstick", "reason", "scored", "unscored",
    "rescored", "best_before", "best", "best_moved", "changed"}`` (``changed``: experiments whose
    fitness moved)."""
    scale = scale if scale is not None else lab.config.loop.scale
    ys, why = lab_yardstick(lab.path, scale)
    scores: dict[str, dict[str, Any]] = {}
    changed: list[str] = []
    scored = 0
    others: dict[str, tuple[Yardstick | None, str | None]] = {}  # a climb to a higher scale
    for rec in lab.store.all():
        judge = (rec.fitness_components or {}).get("judge")
        if _is_climb(rec) and rec.scale != _scale_name(scale):
            if rec.scale not in others:
                others[rec.scale] = lab_yardstick(lab.path, rec.scale)
            o_ys, o_why = others[rec.scale]
            fitness, comps = score(rec.metrics, judge, o_ys, rec.status, o_why)
            comps["promotion"] = "scale"
            before = lab.scores.fitness(rec.id, rec.fitness)
            if (before is None) != (fitness is None) or (fitness is not None and abs(before - fitness) > 1e-9):
                changed.append(rec.id)
            scores[rec.id] = {"fitness": fitness, "fitness_components": comps,
                              "yardstick": o_ys.version if o_ys else None, "_record": rec, "_climb": True}
            continue
        fitness, comps = score(rec.metrics, judge, ys, rec.status, why)
        before = lab.scores.fitness(rec.id, rec.fitness)
        if fitness is not None:
            scored += 1
        if (before is None) != (fitness is None) or (fitness is not None and abs(before - fitness) > 1e-9):
            changed.append(rec.id)
        scores[rec.id] = {"fitness": fitness, "fitness_components": comps,
                          "yardstick": ys.version if ys else None, "_record": rec}
    best = replay_promotions({k: v for k, v in scores.items() if not v.get("_climb")})
    for v in scores.values():
        v.pop("_record", None)
        v.pop("_climb", None)
    out = lab.apply_scores(ys.version if ys else None, scores, best=best)
    out.update(yardstick=ys.version if ys else None, reason=why, scored=scored,
               unscored=len(scores) - scored, changed=changed)
    return out


def _is_climb(rec: Any) -> bool:
    """A child commit of :mod:`agents.climb` (a design re-evaluated at a higher scale)."""
    return (getattr(rec, "promotion", None) or {}).get("outcome") == "scale"


def replay_promotions(scores: dict[str, dict[str, Any]]) -> str | None:
    """Decide ``best`` again over re-scored experiments, in id order, by the promotion rule
    (agents.stats.promote on the per-seed fitness values): each re-scored entry gets
    ``fitness_components["promotion"]`` (the outcome; None for a record made before the rule,
    which moves ``best`` by the higher fitness as it did). ``scores``: ``{id: {"fitness",
    "fitness_components", "_record"}}``. Returns the id of the final best (None if none)."""
    from agents.stats import promote

    best_id: str | None = None
    best_seeds: dict[int, float] | None = None
    best_fit: float | None = None
    for exp_id in sorted(scores, key=int):
        entry = scores[exp_id]
        rec, comps, fit = entry["_record"], entry["fitness_components"], entry["fitness"]
        legacy = not (rec.promotion and "promoted" in rec.promotion)
        if rec.status != "accepted" or fit is None:
            comps["promotion"] = None if legacy else "unmeasured"
            continue
        per_seed = {int(k): float(v) for k, v in (comps.get("fitness_seeds") or {}).items()}
        if legacy:
            comps["promotion"] = None
            if best_fit is None or fit > best_fit:
                best_id, best_fit, best_seeds = exp_id, fit, per_seed or {int(rec.seed): fit}
            continue
        verdict = promote(per_seed, best_seeds)
        comps["promotion"] = verdict.outcome
        comps["promotion_text"] = verdict.text
        if verdict.promoted:
            best_id, best_fit, best_seeds = exp_id, fit, per_seed
    return best_id


def needs_rescore(lab: Any, yardstick: Yardstick | None) -> bool:
    """Whether some record's fitness was computed against another yardstick than ``yardstick``
    (and the score book does not already hold this one)."""
    version = yardstick.version if yardstick else None
    if getattr(lab, "scores", None) is not None and lab.scores.yardstick == version and len(lab.scores):
        known = set(lab.store.ids())
        if all(lab.scores.get(i) is not None for i in known):
            return False
    for doc in lab.index.all():
        if doc.get("fitness") is not None and doc.get("yardstick") != version:
            return True
        if doc.get("fitness") is None and version is not None and doc.get("status") == "accepted" \
                and (doc.get("metrics") or {}).get("status") == "ok" and doc.get("yardstick") != version:
            return True
    return False
