"""Promotion between scales: the best designs of a lab climb from its scale to ``verify-mini`` or
``verify`` (docs/ARCHITECTURE.md, "The evaluation ladder").

:func:`verify_lab` takes the top ``K`` designs at the lab's scale by the promotion rule
(:func:`rank_designs`: only designs measured on at least 2 seeds may rank, as only they may be
called best; ordered by :func:`agents.stats.promote` against one another, the mean fitness
breaking ties), measures the seed (the yardstick) at the higher scale on the same seeds if it is
not measured there yet, re-evaluates each design at that scale on ``seeds`` (>= 2) seeds in the
sandbox (the lab's executor: local, or Ray spreading the runs over its GPUs), scores it against
that yardstick and commits the result as a **child commit** of the design, with the design's code
and a ``Scale: <higher scale>`` trailer, so that ``git log`` shows the climb. A child never moves
the lab's ``best`` (its fitness is measured against another yardstick; ``promotion.outcome`` is
``scale``). A design that already has a child at that scale is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agents import stats

__all__ = ["LADDER", "ClimbError", "ClimbResult", "higher_than", "rank_designs", "scales_reached", "verify_lab"]

#: The evaluation ladder, lowest first.
LADDER: tuple[str, ...] = ("demo", "probe", "explore", "verify-mini", "verify")
#: ``promotion.outcome`` of a child commit at a higher scale (never moves ``best``).
SCALE_OUTCOME = "scale"


class ClimbError(ValueError):
    """The promotion cannot run (bad scale, too few seeds, nothing to promote); one sentence."""


@dataclass
class ClimbResult:
    """One design's climb: ``child`` is the new experiment id (None when skipped, with ``skipped``
    saying why), ``fitness``/``interval`` at the higher scale, ``metrics`` its combined metrics."""

    design: str
    name: str
    scale: str
    child: str | None = None
    sha: str | None = None
    fitness: float | None = None
    interval: list[float] | None = None
    benchmark: float | None = None
    tasks: dict[str, float] = field(default_factory=dict)
    status: str = ""
    skipped: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the full metrics)."""
        return {"design": self.design, "name": self.name, "scale": self.scale, "child": self.child, "sha": self.sha,
                "fitness": self.fitness, "interval": self.interval, "benchmark": self.benchmark,
                "tasks": self.tasks, "status": self.status, "skipped": self.skipped}


def higher_than(scale: str, than: str) -> bool:
    """Whether ``scale`` is above ``than`` on :data:`LADDER` (unknown names are never higher)."""
    return scale in LADDER and than in LADDER and LADDER.index(scale) > LADDER.index(than)


def _per_seed(components: dict[str, Any] | None) -> dict[int, float]:
    seeds = (components or {}).get("fitness_seeds") or {}
    out: dict[int, float] = {}
    for k, v in seeds.items():
        try:
            out[int(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def rank_designs(designs: list[tuple[str, float, dict[int, float]]], min_seeds: int = 2) -> list[str]:
    """Order designs ``(id, mean fitness, {seed: fitness})`` by the promotion rule: designs with
    fewer than ``min_seeds`` seeds are left out; a design that the rule promotes over another
    (:func:`agents.stats.promote`) ranks above it; among those it cannot separate, the higher
    mean ranks first. Returns the ids, best first."""
    pool = [(i, f, s) for i, f, s in designs if len(s) >= min_seeds]
    wins = {i: 0 for i, _, _ in pool}
    for i, _, si in pool:
        for j, _, sj in pool:
            if i != j and stats.promote(si, sj, min_seeds=min_seeds).promoted:
                wins[i] += 1
    return [i for i, _, _ in sorted(pool, key=lambda d: (-wins[d[0]], -d[1], d[0]))]


def scales_reached(store: Any, exp_id: str) -> list[str]:
    """The scales design ``exp_id`` has been evaluated at: its own, then those of its child
    commits made by :func:`verify_lab` (ladder order)."""
    reached = set()
    try:
        doc = store.get(exp_id)
    except Exception:  # noqa: BLE001 - an unknown id reaches nothing
        return []
    if doc.scale:
        reached.add(doc.scale)
    for child in store.children(exp_id):
        rec = store.get(child)
        if (rec.promotion or {}).get("outcome") == SCALE_OUTCOME and rec.scale:
            reached.add(rec.scale)
    return sorted(reached, key=lambda s: (LADDER.index(s) if s in LADDER else len(LADDER), s))


def _already(store: Any, exp_id: str, scale: str) -> str | None:
    for child in store.children(exp_id):
        rec = store.get(child)
        if rec.scale == scale and (rec.promotion or {}).get("outcome") == SCALE_OUTCOME:
            return child
    return None


def verify_lab(lab: Any, top: int = 2, scale: str = "verify", seeds: int = 2, executor: Any = None,
               on_line: Callable[[str], None] | None = None, ids: list[str] | None = None) -> list[ClimbResult]:
    """Promote the lab's top ``top`` designs (or the designs ``ids``) from its scale to ``scale``
    on ``seeds`` seeds (the lab's base seed and the next ones); see the module doc. ``executor``
    overrides the lab's (tests). Returns one :class:`ClimbResult` per design considered. Raises
    :class:`ClimbError`."""
    from agents.loop import Loop
    from training.scales import SCALES

    say = on_line or (lambda line: None)
    if scale not in SCALES:
        raise ClimbError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    base_scale = lab.config.loop.scale
    if not higher_than(scale, base_scale):
        raise ClimbError(f"the lab's scale is {base_scale}; {scale} is not above it on the ladder ({' < '.join(LADDER)})")
    if seeds < 2:
        raise ClimbError("--seeds must be at least 2: nothing is called better on one seed")
    if top < 1 and not ids:
        raise ClimbError("--top must be at least 1")
    store = lab.store
    store.refresh_if_changed()
    if ids:
        chosen = list(ids)
        for i in chosen:
            if i not in store:
                raise ClimbError(f"no experiment {i} in the lab")
    else:
        designs = []
        for rec in store.all():
            if rec.status != "accepted" or rec.scale != base_scale or rec.id == "0000":
                continue
            if (rec.promotion or {}).get("outcome") == SCALE_OUTCOME:
                continue
            fit = lab.scores.fitness(rec.id, rec.fitness) if getattr(lab, "scores", None) is not None else rec.fitness
            comps = (lab.scores.get(rec.id) or {}).get("fitness_components") if getattr(lab, "scores", None) \
                is not None and lab.scores.get(rec.id) else rec.fitness_components
            per = _per_seed(comps) or {int(k): float(v) for k, v in (rec.fitness_seeds or {}).items()}
            if fit is not None:
                designs.append((rec.id, float(fit), per))
        ranked = rank_designs(designs)
        if not ranked:
            raise ClimbError(f"no design at scale {base_scale} is scored on at least 2 seeds, so none may be promoted "
                             "(the loop measures the designs entering its top on [loop] seeds seeds)")
        chosen = ranked[:top]
    loop = Loop(lab, llm="builtin", scale=scale, experiments=0, baselines=(), executor=executor)
    try:
        return _climb(lab, loop, chosen, base_scale, scale, int(seeds), say)
    finally:
        loop.bus.close()


def _climb(lab: Any, loop: Any, chosen: list[str], base_scale: str, scale: str, seeds: int,
           say: Callable[[str], None]) -> list[ClimbResult]:
    """The body of :func:`verify_lab` once the designs are chosen."""
    from agents.repro import environment
    from agents.seeds import combine
    from agents.yardstick import lab_yardstick, score
    from archive.record import ExperimentRecord
    from training.mixers import SEED_MIXER

    store = lab.store
    loop.n_seeds = seeds
    seed_list = loop._seed_list()
    ys, why = lab_yardstick(lab.path, scale)
    if ys is None or not set(seed_list) <= {e.get("seed") for e in (ys.metrics.get("seeds") or [ys.metrics])
                                            if e.get("status") == "ok"}:
        say(f"[verify] measuring the seed ({SEED_MIXER}) at {scale} on seeds {seed_list} (the yardstick)")
        loop.measure_baseline(SEED_MIXER)
        ys, why = lab_yardstick(lab.path, scale)
    results: list[ClimbResult] = []
    runs_dir = Path(lab.runs_dir) / "verify" / scale
    todo: list[tuple[ClimbResult, Any, str, Path]] = []
    for exp_id in chosen:
        rec = store.get(exp_id)
        res = ClimbResult(exp_id, rec.name, scale)
        results.append(res)
        done = _already(store, exp_id, scale)
        if done:
            res.skipped, res.child = f"already evaluated at {scale} (experiment {done})", done
            say(f"[verify] {exp_id} {rec.name}: {res.skipped}")
            continue
        code = store.read_file(exp_id, "mixer.py").decode("utf-8")
        rd = runs_dir / exp_id
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "mixer.py").write_text(code, encoding="utf-8")
        todo.append((res, rec, code, rd))

    def run_one(job: tuple[Path, str, int]) -> dict[str, Any]:
        rd, label, sd = job
        say(f"[verify] {label} at {scale}, seed {sd}")
        out = loop.executor.evaluate(rd / "mixer.py", rd / f"seed-{sd}", sd, ys.metrics if ys else None,
                                     on_line=lambda line: say(line))
        m = out.metrics or {"status": "error", "error": out.error, "partial": True, "seed": sd}
        m.setdefault("seed", sd)
        return m

    # every (design, seed) run is independent: up to [executor] concurrency in flight (a Ray
    # executor with GPUs spreads them over the cluster's GPUs; the local one runs them in turn)
    jobs = [(rd, f"{res.design} {rec.name}", sd) for res, rec, _, rd in todo for sd in seed_list]
    if loop.concurrency > 1 and len(jobs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=loop.concurrency) as pool:
            all_runs = list(pool.map(run_one, jobs))
    else:
        all_runs = [run_one(j) for j in jobs]
    for n, (res, rec, code, _rd) in enumerate(todo):
        exp_id = res.design
        runs = all_runs[n * len(seed_list):(n + 1) * len(seed_list)]
        metrics = combine(runs)
        judge = (rec.fitness_components or {}).get("judge")
        fitness, comps = score(metrics, judge, ys, "accepted", why)
        res.metrics, res.fitness, res.interval = metrics, fitness, comps.get("fitness_interval")
        res.status = str(metrics.get("status"))
        res.benchmark = metrics.get("benchmark") if metrics.get("benchmark_kind") == "lm_eval" else metrics.get("probe_mean")
        res.tasks = {t: v.get("score") for t, v in ((metrics.get("lm_eval") or {}).get("tasks") or {}).items()}
        ok = metrics.get("status") == "ok" and not metrics.get("partial")
        text = (f"{rec.name} re-evaluated at {scale} on seeds {seed_list}: fitness "
                + (f"{fitness:.4f}" if fitness is not None else "none")
                + (f" (interval [{res.interval[0]:.4f}, {res.interval[1]:.4f}])" if res.interval else ""))
        child = ExperimentRecord(
            id="", name=rec.name, parent=exp_id, status="accepted" if ok else "failed",
            motivation=(f"Promotion from {base_scale} to {scale}: experiment {exp_id} ({rec.name}) is among the top "
                        f"{len(chosen)} at {base_scale} by the promotion rule and is re-trained and evaluated at "
                        f"{scale} on {len(seed_list)} seeds; its code is unchanged."),
            code=code, metrics=metrics, fitness=fitness if ok else None,
            fitness_components=comps, yardstick=ys.version if ys else "", scale=scale,
            researcher="verify", seed=seed_list[0], genome=rec.genome,
            fitness_interval=res.interval, fitness_seeds=dict(comps.get("fitness_seeds") or {}),
            promotion={"promoted": False, "outcome": SCALE_OUTCOME, "rule": "scale",
                       "text": text, "incumbent": None, "from_scale": base_scale},
            problem="" if ok else str(metrics.get("error") or metrics.get("stop_reason") or "evaluation failed")[:500],
            extra={"climb": {"from": exp_id, "from_scale": base_scale, "scale": scale, "seeds": seed_list}},
        )
        try:
            child.reproduce = environment(scale, seed_list, seed_list[0], lab.config,
                                          threads=getattr(getattr(loop.executor, "limits", None), "threads", None))
        except Exception as exc:  # noqa: BLE001 - never lose the result over its environment record
            child.reproduce = {"error": f"{type(exc).__name__}: {exc}"}
        res.sha = lab.commit(child, novelty=False)
        res.child = child.id
        say(f"[verify] {exp_id} -> {child.id} ({scale}): {text}")
    return results
