"""What a lab's report shows, read from the lab: every experiment record (re-scored where the
yardstick changed), the cached baselines, the measured seed; the top, the table rows, the
winners' lines of descent and what they drew on. No figure is drawn here."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The figures of a report, file name → title.
FIGURES = {
    "discovery": "Discovery curve",
    "lineage": "Lineage tree coloured by fitness",
    "components": "Fitness components over time",
    "top": "Top 10 experiments against the baselines",
    "influences": "What the winners drew on",
}

TOP_N = 10


@dataclass
class ReportData:
    """Everything a report shows, read from a lab.

    ``records``: every experiment (``ExperimentRecord``), by id; ``baselines``: reference mixer
    name → metrics at the lab's scale (status ok only); ``seed_fitness``: fitness of the measured
    seed (the yardstick, None before the loop first ran); ``entry_titles``: cognition entry id →
    title."""

    lab_path: Path
    scale: str
    records: list[Any]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline_file: Path | None = None
    seed_fitness: float | None = None
    best_id: str | None = None
    entry_titles: dict[str, str] = field(default_factory=dict)
    #: ``{seed: fitness}`` of the measured seed (the promotion rule's "beats the seed")
    seed_seeds: dict[int, float] = field(default_factory=dict)

    def beats_seed(self, rec: Any) -> bool:
        """Whether ``rec`` beats the measured seed by the promotion rule (agents.stats): a
        one-seed design never does."""
        from agents.stats import promote

        if rec.status != "accepted" or not is_num(rec.fitness) or rec.extra.get("measures") is not None:
            return False
        mine = fitness_by_seed(rec)
        if not self.seed_seeds:
            return False
        return promote(mine, self.seed_seeds, what="the seed").promoted

    @property
    def scored(self) -> list[Any]:
        """Records with a fitness, in id order."""
        return [r for r in self.records if is_num(r.fitness)]

    def top(self, n: int = TOP_N) -> list[Any]:
        """The ``n`` fittest accepted experiments (ties by id)."""
        acc = [r for r in self.scored if r.status == "accepted"]
        return sorted(acc, key=lambda r: (-float(r.fitness), int(r.id)))[:n]

    def by_id(self) -> dict[str, Any]:
        """Records by id."""
        return {r.id: r for r in self.records}


@dataclass
class Report:
    """What :func:`build_report` wrote: the page, the figures (name → path) and counts."""

    html: Path
    figures: dict[str, Path]
    counts: dict[str, int]
    best_id: str | None


def fitness_by_seed(rec: Any) -> dict[int, float]:
    """``{seed: fitness}`` of a record (its one fitness on its seed when it predates multi-seed
    evaluation)."""
    fs = getattr(rec, "fitness_seeds", None) or {}
    if fs:
        return {int(k): float(v) for k, v in fs.items()}
    return {int(rec.seed): float(rec.fitness)} if is_num(rec.fitness) else {}


def fitness_spread(rec: Any) -> str:
    """``0.612 ± 0.021 (3 seeds)`` or ``0.612``."""
    from agents.stats import format_spread, summarize

    s = summarize(fitness_by_seed(rec).values())
    if s is None or s.n < 2:
        return f"{float(rec.fitness):.3f}" if is_num(rec.fitness) else "–"
    return format_spread(float(rec.fitness), s.std, s.n)


def is_num(x: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _load_baselines(lab_path: Path, scale: str) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """The cached baselines of ``scale`` (``lab/baselines/<scale>.json``; a custom scale's file
    ``<scale>-<hash>.json`` when the plain one is missing, the newest such)."""
    folder = lab_path / "baselines"
    if not folder.is_dir():
        return {}, None
    path = folder / f"{scale}.json"
    if not path.is_file():
        alts = sorted(folder.glob(f"{scale}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        if not alts:
            return {}, None
        path = alts[0]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}, path
    if not isinstance(data, dict):
        return {}, path
    ok = {k: v for k, v in data.items() if isinstance(v, dict) and v.get("status") == "ok"}
    return ok, path


def _entry_titles() -> dict[str, str]:
    try:
        from corpus.schema import load_entries

        return {e.id: e.title for e in load_entries()}
    except Exception:  # the cognition base is optional for a report
        return {}


def collect(lab: Any) -> ReportData:
    """Read a lab (an open ``archive.lab.Lab``) into a :class:`ReportData`."""
    from archive.record import SEED_ID

    records = sorted(lab.store.all(), key=lambda r: int(r.id))
    scores = getattr(lab, "scores", None)
    for r in records:  # fitness is derived: the re-scored figures where the yardstick changed
        s = scores.get(r.id) if scores is not None else None
        if s is not None:
            r.fitness, r.fitness_components = s.get("fitness"), s.get("fitness_components") or {}
            if "fitness_interval" in r.fitness_components:  # per-seed figures re-scored too
                r.fitness_interval = r.fitness_components.get("fitness_interval")
                r.fitness_seeds = dict(r.fitness_components.get("fitness_seeds") or {})
            if "promotion" in r.fitness_components:
                r.promotion = {**(r.promotion or {}), "outcome": r.fitness_components.get("promotion"),
                               "promoted": r.fitness_components.get("promotion") == "promoted"}
        if r.status != "accepted":  # failed / too_slow / stopped_early / rejected: no fitness (older archives: 0.48)
            r.fitness = None
    scales = Counter(r.scale for r in records if r.metrics and r.scale)
    scale = scales.most_common(1)[0][0] if scales else str(lab.config.loop.scale)
    baselines, bfile = _load_baselines(Path(lab.path), scale)
    seed_fit, seed_seeds = None, {}
    for r in records:
        if r.extra.get("measures") == SEED_ID and is_num(r.fitness):
            seed_fit = float(r.fitness)
            seed_seeds = fitness_by_seed(r)
            break
    best = None
    try:
        b = lab.store.best()
        best = b.id if b is not None else None
    except Exception:
        best = None
    data = ReportData(Path(lab.path), scale, records, baselines, bfile, seed_fit, best, _entry_titles(),
                      seed_seeds)
    if data.best_id is None and data.top(1):
        data.best_id = data.top(1)[0].id
    return data

def top_rows(data: ReportData) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, metrics, is_baseline) for the top experiments and the baselines."""
    rows = [(f"{r.id} {r.name}"[:34], r.metrics or {}, False) for r in data.top()]
    rows += [(f"[baseline] {name}", m, True) for name, m in sorted(data.baselines.items())]
    return rows


def winners_lines(data: ReportData, n: int = TOP_N) -> list[Any]:
    """The top ``n`` experiments and all their ancestors (the lines of descent that led to the
    winners), each once, the seed excluded."""
    recs = data.by_id()
    seen: dict[str, Any] = {}
    for r in data.top(n):
        cur: Any = r
        while cur is not None and cur.id not in seen:
            if cur.parent is not None and cur.extra.get("measures") is None:
                seen[cur.id] = cur
            cur = recs.get(cur.parent) if cur.parent else None
    return list(seen.values())


def influences(data: ReportData) -> dict[str, Any]:
    """Operator and cognition-entry counts in the winners' lines vs in the whole search."""
    lines = winners_lines(data)
    pool = [r for r in data.records if r.parent is not None and r.extra.get("measures") is None]
    ops_w = Counter(o for r in lines for o in (r.operators or []))
    ops_all = Counter(o for r in pool for o in (r.operators or []))
    cog_w = Counter(c for r in lines for c in (r.cognition or []))
    cog_all = Counter(c for r in pool for c in (r.cognition or []))
    return {"lines": len(lines), "pool": len(pool), "ops_w": ops_w, "ops_all": ops_all, "cog_w": cog_w,
            "cog_all": cog_all}
