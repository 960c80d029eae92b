"""Research report of a lab: PNG figures (matplotlib) and one HTML page that shows them.

``build_report(lab, out_dir)`` reads the archive (every experiment record) and the cached
baselines (``lab/baselines/<scale>.json``, written by the loop) and writes into ``out_dir``
(default ``lab/report``):

- ``discovery.png``: fitness of every experiment in order, the best so far, and the cumulative
  count of experiments that beat the measured seed (ASI-Arch's discovery curve);
- ``lineage.png``: the lineage tree, radial, nodes coloured by fitness (ASI-Arch's phylogenetic
  figure); failed and rejected experiments are small grey dots, the best is a star;
- ``components.png``: the fitness components (s_loss, s_score, s_judge) and the fitness over
  time, points and rolling means; hollow points are components that were not measured;
- ``top.png``: the 10 fittest experiments' probe accuracies (heatmap) and mean probe score (and
  validation bits per byte when the scale trains an LM) against the reference baselines;
- ``influences.png``: the operators and cognition entries the winners' lines of descent drew
  on, against how often the whole search used them;
- ``index.html``: the page (figures, the top-10 table with baselines, counts).

Only the lab's files are read; nothing is trained or evaluated.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ReportData", "Report", "collect", "build_report", "FIGURES", "lineage_layout"]

#: The figures of a report, file name → title.
FIGURES = {
    "discovery": "Discovery curve",
    "lineage": "Lineage tree coloured by fitness",
    "components": "Fitness components over time",
    "top": "Top 10 experiments against the baselines",
    "influences": "What the winners drew on",
}

TOP_N = 10
_STATUS_COLOURS = {"accepted": "#2a9d8f", "failed": "#e76f51", "rejected": "#e9c46a", "too_slow": "#9b5de5",
                   "stopped_early": "#457b9d"}


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

        if rec.status != "accepted" or not _num(rec.fitness) or rec.extra.get("measures") is not None:
            return False
        mine = fitness_by_seed(rec)
        if not self.seed_seeds:
            return False
        return promote(mine, self.seed_seeds, what="the seed").promoted

    @property
    def scored(self) -> list[Any]:
        """Records with a fitness, in id order."""
        return [r for r in self.records if _num(r.fitness)]

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
    return {int(rec.seed): float(rec.fitness)} if _num(rec.fitness) else {}


def fitness_spread(rec: Any) -> str:
    """``0.612 ± 0.021 (3 seeds)`` or ``0.612``."""
    from agents.stats import format_spread, summarize

    s = summarize(fitness_by_seed(rec).values())
    if s is None or s.n < 2:
        return f"{float(rec.fitness):.3f}" if _num(rec.fitness) else "–"
    return format_spread(float(rec.fitness), s.std, s.n)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------------------ reading a lab

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
        if r.extra.get("measures") == SEED_ID and _num(r.fitness):
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


# ------------------------------------------------------------------------------ figures

def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def _rolling(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def figure_discovery(data: ReportData, path: Path) -> Path:
    """The discovery curve: fitness per experiment, best so far, cumulative count above the seed."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    recs = [r for r in data.records if r.status != "accepted" or _num(r.fitness) or r.metrics]
    if not data.scored:
        _empty(ax, "no measured experiment yet")
        _empty(ax2, "")
    else:
        order = {r.id: i for i, r in enumerate(recs)}
        pts = [(order[r.id], float(r.fitness)) for r in recs if r.status == "accepted" and _num(r.fitness)]
        if pts:
            ax.scatter(*zip(*pts), s=18, alpha=0.65, color=_STATUS_COLOURS["accepted"], label=f"accepted ({len(pts)})",
                       zorder=3)
        # experiments without a fitness (failed, too slow, rejected, unmeasured) are no points of
        # the fitness line: ticks in the lower panel, by status
        for status in ("failed", "too_slow", "stopped_early", "rejected", "accepted"):
            ticks = [order[r.id] for r in recs if r.status == status and not _num(r.fitness)]
            if ticks:
                ax2.scatter(ticks, [0.0] * len(ticks), marker="|", s=80, color=_STATUS_COLOURS.get(status, "#999999"),
                            label=f"{'unmeasured' if status == 'accepted' else status}, no fitness ({len(ticks)})",
                            zorder=3)
        xs, best_line, new_best = [], [], []
        best_id = None
        for r, b in zip(recs, _best_over_time(recs)):
            if b["best"] is not None and b["best"] != best_id:
                best_id = b["best"]
                new_best.append((order[r.id], b["lower"], r.id))
            xs.append(order[r.id])
            best_line.append(b["lower"] if b["lower"] is not None else math.nan)
        ax.step(xs, best_line, where="post", color="#264653", lw=2,
                label="best so far (lower bound of its interval)", zorder=4)
        for x, y, i in new_best[-8:]:
            ax.annotate(i, (x, y), textcoords="offset points", xytext=(2, 6), fontsize=7, color="#264653")
        if data.seed_fitness is not None:
            ax.axhline(data.seed_fitness, color="#8d99ae", ls="--", lw=1, label=f"seed ({data.seed_fitness:.3f})")
        ax.set_ylabel("fitness")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(loc="lower right", fontsize=8, ncol=3)
        ax.grid(alpha=0.3)
        ref = data.seed_fitness if data.seed_fitness is not None else 0.5
        cum, n = [], 0
        for r in recs:
            if (data.beats_seed(r) if data.seed_seeds else
                    (r.status == "accepted" and _num(r.fitness) and float(r.fitness) > ref
                     and r.extra.get("measures") is None)):
                n += 1
            cum.append(n)
        ax2.fill_between(xs, cum, step="post", alpha=0.35, color="#2a9d8f")
        ax2.step(xs, cum, where="post", color="#2a9d8f")
        ax2.set_ylabel("cumulative\nbeating the seed")
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(loc="upper left", fontsize=7, ncol=4)
        ax2.set_xlabel("experiment (in order of creation)")
        ax2.grid(alpha=0.3)
    ax.set_title(f"Discovery curve ({len(data.records)} experiments, scale {data.scale})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _best_over_time(recs: list[Any]) -> list[dict[str, Any]]:
    """``archive.lineage.best_over_time`` over records (the promotion rule's ``best``)."""
    from archive.index import fitness_std, n_seeds
    from archive.lineage import best_over_time

    docs = [{"id": r.id, "status": r.status, "fitness": r.fitness, "fitness_interval": r.fitness_interval,
             "fitness_std": fitness_std(r), "n_seeds": n_seeds(r),
             "promotion": (r.promotion or {}).get("outcome")} for r in recs]
    by_id = {d["id"]: d for d in best_over_time(docs)}
    return [by_id[r.id] for r in recs]


def lineage_layout(parents: dict[str, str | None]) -> dict[str, tuple[float, int]]:
    """A tree layout: id → (position in [0, 1), depth). Leaves are spread evenly in depth-first
    order (children by id); a parent sits at the mean of its children. Ids whose parent is
    unknown are roots."""
    children: dict[str | None, list[str]] = {}
    for i, p in parents.items():
        children.setdefault(p if p in parents else None, []).append(i)
    for v in children.values():
        v.sort(key=lambda s: int(s) if s.isdigit() else s)
    leaves: list[str] = []
    depth: dict[str, int] = {}
    stack = [(r, 0) for r in reversed(children.get(None, []))]
    post: list[str] = []
    seen: set[str] = set()
    while stack:
        node, d = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        depth[node] = d
        post.append(node)
        kids = children.get(node, [])
        if not kids:
            leaves.append(node)
        for k in reversed(kids):
            stack.append((k, d + 1))
    n = max(1, len(leaves))
    pos = {leaf: i / n for i, leaf in enumerate(leaves)}
    for node in reversed(post):  # children before parents
        if node not in pos:
            ks = [pos[k] for k in children.get(node, []) if k in pos]
            pos[node] = sum(ks) / len(ks) if ks else 0.0
    return {i: (pos[i], depth[i]) for i in post}


def figure_lineage(data: ReportData, path: Path) -> Path:
    """The lineage as a radial tree, nodes coloured by fitness."""
    plt = _plt()
    from matplotlib import cm, colors

    fig, ax = plt.subplots(figsize=(9.5, 9))
    recs = data.by_id()
    if not recs:
        _empty(ax, "the archive is empty")
    else:
        layout = lineage_layout({r.id: r.parent for r in data.records})
        maxd = max(d for _, d in layout.values()) or 1

        def xy(i: str) -> tuple[float, float]:
            p, d = layout[i]
            ang = 2 * math.pi * p + math.pi / 2
            rad = d / maxd
            return rad * math.cos(ang), rad * math.sin(ang)

        for d in range(1, maxd + 1):  # generation rings
            ax.add_patch(plt.Circle((0, 0), d / maxd, fill=False, color="#eeeeee", lw=0.6, zorder=0))
        for i, r in recs.items():
            if r.parent in layout and i in layout:
                (x0, y0), (x1, y1) = xy(r.parent), xy(i)
                ax.plot([x0, x1], [y0, y1], color="#bbbbbb", lw=0.7, zorder=1)
        fits = [float(r.fitness) for r in data.scored]
        norm = colors.Normalize(vmin=min(fits), vmax=max(fits) if max(fits) > min(fits) else min(fits) + 1e-6) \
            if fits else colors.Normalize(0, 1)
        cmap = cm.get_cmap("viridis") if hasattr(cm, "get_cmap") else plt.get_cmap("viridis")
        grey = [xy(i) for i, r in recs.items() if not _num(r.fitness) and i in layout]
        if grey:
            ax.scatter(*zip(*grey), s=10, color="#cccccc", edgecolors="#999999", linewidths=0.3, zorder=2,
                       label="failed / rejected / not measured")
        pts = [(xy(r.id), float(r.fitness)) for r in data.scored if r.id in layout]
        if pts:
            sc = ax.scatter([p[0][0] for p in pts], [p[0][1] for p in pts], c=[p[1] for p in pts], cmap=cmap, norm=norm,
                            s=[22 + 60 * norm(p[1]) for p in pts], edgecolors="black", linewidths=0.3, zorder=3)
            fig.colorbar(sc, ax=ax, shrink=0.7, pad=0.02, label="fitness")
        roots = [i for i in layout if layout[i][1] == 0]
        for i in roots:
            ax.scatter(*xy(i), s=120, marker="s", color="#264653", zorder=4)
            ax.annotate(f"{i} {recs[i].name}", xy(i), textcoords="offset points", xytext=(6, -12), fontsize=8)
        for r in data.top(5):
            ax.annotate(r.id, xy(r.id), textcoords="offset points", xytext=(5, 5), fontsize=8, color="#1d3557")
        if data.best_id in layout:
            ax.scatter(*xy(data.best_id), s=380, marker="*", color="gold", edgecolors="black", linewidths=0.8,
                       zorder=5, label=f"best: {data.best_id} {recs[data.best_id].name}")
        ax.legend(loc="lower left", fontsize=8, frameon=False)
        ax.set_aspect("equal")
        ax.axis("off")
    ax.set_title(f"Lineage ({len(recs)} experiments; distance from centre = generation)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_components(data: ReportData, path: Path) -> Path:
    """s_loss, s_score, s_judge and fitness over the experiments that have them."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5))
    recs = [r for r in data.scored if r.fitness_components]
    if not recs:
        _empty(ax, "no scored experiment yet")
    else:
        xs = list(range(len(recs)))
        window = max(3, len(recs) // 12)
        styles = {"s_loss": "#e76f51", "s_score": "#2a9d8f", "s_judge": "#8338ec"}
        for key, colour in styles.items():
            vals = [float(r.fitness_components.get(key, 0.5)) for r in recs]
            measured = [bool((r.fitness_components.get("measured") or {}).get(key, True)) for r in recs]
            mx = [(x, v) for x, v, m in zip(xs, vals, measured) if m]
            ux = [(x, v) for x, v, m in zip(xs, vals, measured) if not m]
            if mx:
                ax.scatter(*zip(*mx), s=12, color=colour, alpha=0.45)
            if ux:
                ax.scatter(*zip(*ux), s=12, facecolors="none", edgecolors=colour, alpha=0.45)
            n_meas = sum(measured)
            ax.plot(xs, _rolling(vals, window), color=colour, lw=2,
                    label=f"{key} (rolling mean; measured {n_meas}/{len(vals)})")
        fit = [float(r.fitness) for r in recs]
        ax.plot(xs, _rolling(fit, window), color="black", lw=2.2, ls="--", label="fitness (rolling mean)")
        ax.axhline(0.5, color="#999999", lw=0.8, ls=":")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("scored experiment (in order of creation)")
        ax.set_ylabel("component in [0, 1]")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
        ticks = xs[:: max(1, len(xs) // 10)]
        ax.set_xticks(ticks)
        ax.set_xticklabels([recs[i].id for i in ticks], fontsize=8)
    ax.set_title("Fitness components over time (hollow: not measured, counted 0.5)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _std(m: dict[str, Any], key: str) -> float:
    """The std over seeds of ``m[key]`` (0 for one seed or none recorded)."""
    s = (m.get("spread") or {}).get(key) if isinstance(m.get("spread"), dict) else None
    if isinstance(s, dict) and _num(s.get("std")) and int(s.get("n") or 0) >= 2:
        return float(s["std"])
    return 0.0


def _nseeds(m: dict[str, Any]) -> int:
    return int(m.get("n_seeds") or len(m.get("seeds") or []) or 1)


def _rows(data: ReportData) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, metrics, is_baseline) for the top experiments and the baselines."""
    rows = [(f"{r.id} {r.name}"[:34], r.metrics or {}, False) for r in data.top()]
    rows += [(f"[baseline] {name}", m, True) for name, m in sorted(data.baselines.items())]
    return rows


def figure_top(data: ReportData, path: Path) -> Path:
    """Heatmap of probe accuracies and bars of probe mean (and val bpb) for top 10 + baselines."""
    plt = _plt()
    rows = _rows(data)
    probes = sorted({p for _, m, _ in rows for p, v in (m.get("probes") or {}).items() if _num(v)})
    has_bpb = any(_num(m.get("val_bpb")) for _, m, _ in rows)
    ncols = 1 + int(bool(probes)) + int(has_bpb)
    widths = ([max(3.0, 0.7 * len(probes))] if probes else []) + [3.0] + ([3.0] if has_bpb else [])
    fig, axes = plt.subplots(1, ncols, figsize=(3.2 + sum(widths), 1.6 + 0.42 * max(1, len(rows))),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    axes = list(axes[0])
    if not rows:
        for a in axes:
            _empty(a, "no accepted experiment and no baseline yet")
    else:
        labels = [lab for lab, _, _ in rows]
        y = list(range(len(rows)))
        k = 0
        if probes:
            import numpy as np

            ax = axes[k]
            k += 1
            mat = np.array([[float((m.get("probes") or {}).get(p, np.nan)) if _num((m.get("probes") or {}).get(p))
                             else np.nan for p in probes] for _, m, _ in rows])
            im = ax.imshow(mat, aspect="auto", cmap="magma", vmin=0.0, vmax=1.0)
            for i in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    if not np.isnan(mat[i, j]):
                        ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if mat[i, j] < 0.6 else "black")
            ax.set_xticks(range(len(probes)))
            ax.set_xticklabels(probes, rotation=35, ha="right", fontsize=8)
            ax.set_yticks(y)
            ax.set_yticklabels(labels, fontsize=8)
            ax.set_title("probe accuracy")
            fig.colorbar(im, ax=ax, shrink=0.6, pad=0.01)
        ax = axes[k]
        k += 1
        vals = [float(m["probe_mean"]) if _num(m.get("probe_mean")) else 0.0 for _, m, _ in rows]
        cols = ["#8d99ae" if b else "#2a9d8f" for _, _, b in rows]
        errs = [_std(m, "probe_mean") for _, m, _ in rows]
        ax.barh(y, vals, color=cols, xerr=errs, error_kw={"ecolor": "#333333", "capsize": 2, "lw": 0.8})
        for yi, v, e, (_, m, _) in zip(y, vals, errs, rows):
            n = _nseeds(m)
            txt = (f" {v:.3f}" + (f" ± {e:.3f} ({n})" if n >= 2 else "")) if _num(m.get("probe_mean")) else " –"
            ax.text(v + e, yi, txt, va="center", fontsize=7)
        seed = data.baselines.get("deltanet", {}).get("probe_mean")
        if _num(seed):
            ax.axvline(float(seed), color="#264653", ls="--", lw=1, label="seed baseline (DeltaNet)")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.04), frameon=False)
        ax.set_yticks(y)
        ax.set_yticklabels(labels if not probes else [""] * len(y), fontsize=8)
        ax.set_xlim(0, max(1.0, max(vals) * 1.15))
        ax.set_title("mean probe score (higher is better)")
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top, aligned with the heatmap's rows
        if has_bpb:
            ax = axes[k]
            vals = [float(m["val_bpb"]) if _num(m.get("val_bpb")) else 0.0 for _, m, _ in rows]
            errs = [_std(m, "val_bpb") for _, m, _ in rows]
            ax.barh(y, vals, color=cols, xerr=errs, error_kw={"ecolor": "#333333", "capsize": 2, "lw": 0.8})
            for yi, v, e in zip(y, vals, errs):
                ax.text(v + e, yi, f" {v:.3f}" if v else " –", va="center", fontsize=7)
            ax.set_yticks(y)
            ax.set_yticklabels([""] * len(y))
            ax.set_ylim(len(rows) - 0.5, -0.5)
            ax.set_title("validation bits/byte (lower is better)")
    fig.suptitle(f"Top {TOP_N} experiments (green) against the reference baselines (grey), scale {data.scale}; "
                 "error bars: std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def figure_influences(data: ReportData, path: Path) -> Path:
    """Operators and cognition entries: share of the winners' lines using each vs share of all."""
    plt = _plt()
    inf = influences(data)
    handles: tuple[list[Any], list[str]] = ([], [])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1, 1.25]})
    for ax, kw, ka, what in ((a1, "ops_w", "ops_all", "operators"), (a2, "cog_w", "cog_all", "cognition entries")):
        w, a = inf[kw], inf[ka]
        if not a and not w:
            _empty(ax, f"no {what} recorded")
            ax.set_title(what)
            continue
        keys = [k for k, _ in (w + Counter({k: 0 for k in a})).most_common()]
        keys = sorted(keys, key=lambda k: (-w.get(k, 0), -a.get(k, 0), k))[:15]
        y = list(range(len(keys)))
        sw = [w.get(k, 0) / max(1, inf["lines"]) for k in keys]
        sa = [a.get(k, 0) / max(1, inf["pool"]) for k in keys]
        ax.barh([v - 0.2 for v in y], sw, height=0.4, color="#2a9d8f",
                label=f"winners' lines ({inf['lines']} experiments)")
        ax.barh([v + 0.2 for v in y], sa, height=0.4, color="#8d99ae", label=f"all experiments ({inf['pool']})")
        for yi, k in zip(y, keys):
            ax.text(sw[y.index(yi)], yi - 0.2, f" {w.get(k, 0)}", va="center", fontsize=7)
        names = [_short(data.entry_titles.get(k, k) if what != "operators" else k, 50) for k in keys]
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("share of experiments using it")
        ax.set_title(what)
        ax.grid(axis="x", alpha=0.3)
        handles = ax.get_legend_handles_labels()
    if handles[0]:
        fig.legend(*handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(f"What the top {TOP_N} and their ancestors drew on")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# ------------------------------------------------------------------------------ the page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#1d1d1d;line-height:1.45}
h1{margin-bottom:.2em} .meta{color:#555} figure{margin:1.5em 0} img{max-width:100%;border:1px solid #ddd}
figcaption{color:#444;font-size:.92em;margin-top:.3em}
table{border-collapse:collapse;font-size:.9em;margin:1em 0} th,td{border-bottom:1px solid #e3e3e3;
padding:.3em .6em;text-align:right} th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
tr.baseline td{color:#555;background:#f6f6f6} .better{color:#1a7f37;font-weight:600}
code{background:#f3f3f3;padding:0 .25em}
blockquote{white-space:pre-wrap;border-left:3px solid #ccc;margin:1em 0;padding:.2em 1em;color:#333}
"""


def _fmt(v: Any, nd: int = 3) -> str:
    return f"{float(v):.{nd}f}" if _num(v) else "–"


def _table(data: ReportData) -> str:
    probes = sorted({p for _, m, _ in _rows(data) for p in (m.get("probes") or {})})
    seed = data.baselines.get("deltanet", {})
    head = ["", "experiment", "fitness", "probe mean", "val bpb", "mixer params"] + probes
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for rank, r in enumerate(data.top(), 1):
        m = r.metrics or {}
        pm = m.get("probe_mean")
        better = data.beats_seed(r)
        cells = [str(rank), f"<code>{html.escape(r.id)}</code> {html.escape(r.name)}",
                 html.escape(fitness_spread(r)) + (f" [{r.fitness_interval[0]:.3f}, {r.fitness_interval[1]:.3f}]"
                                                   if r.fitness_interval else ""),
                 f"<span class='better'>{_fmt(pm)}</span>" if better else _fmt(pm), _fmt(m.get("val_bpb")),
                 str(m.get("mixer_params", "–"))]
        cells += [_fmt((m.get("probes") or {}).get(p), 2) for p in probes]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for name, m in sorted(data.baselines.items()):
        cells = ["", f"baseline: {html.escape(name)}", "", _fmt(m.get("probe_mean")), _fmt(m.get("val_bpb")),
                 str(m.get("mixer_params", "–"))]
        cells += [_fmt((m.get("probes") or {}).get(p), 2) for p in probes]
        out.append("<tr class='baseline'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_CAPTIONS = {
    "discovery": ("Fitness of every experiment in the order it was created (points by status), the best design "
                  "so far as the lower end of its 90% fitness interval over seeds (line; new bests labelled; best "
                  "moves only by the promotion rule), the measured seed (dashed) and, below, how many experiments "
                  "have beaten the seed so far by the promotion rule."),
    "lineage": ("Each experiment is a node joined to its parent; distance from the centre is the generation. "
                "Colour and size: fitness. Grey dots: failed, rejected or unmeasured experiments. Star: the best."),
    "components": ("The three fitness components per scored experiment and their rolling means: s_loss "
                   "(validation loss against the seed), s_score (probe score against the seed), s_judge "
                   "(the judge's rubric). A component that could not be measured counts 0.5 (hollow)."),
    "top": ("The ten fittest accepted experiments against the reference baselines measured at the same scale "
            "and seeds (lab/baselines); error bars are the standard deviation over seeds. In the table, a "
            "green probe mean marks a design that beats the seed by the promotion rule."),
    "influences": ("Operators and cognition entries recorded by the experiments on the winners' lines of descent "
                   "(the top ten and all their ancestors), as a share of those experiments, against their share "
                   "over the whole search. Counts are labelled."),
}


def render_html(data: ReportData, figures: dict[str, Path], out_dir: Path) -> str:
    """The report page (figures linked by relative path)."""
    counts = Counter(r.status for r in data.records)
    best = data.by_id().get(data.best_id) if data.best_id else None
    inf = influences(data)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>asiarch report: {html.escape(data.lab_path.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>asiarch report: {html.escape(data.lab_path.name)}</h1>",
        f"<p class='meta'>Lab <code>{html.escape(str(data.lab_path))}</code> · scale <b>{html.escape(data.scale)}</b> · "
        f"{len(data.records)} experiments: {counts.get('accepted', 0)} accepted, {counts.get('failed', 0)} failed, "
        f"{counts.get('rejected', 0)} rejected · generated {now}</p>",
    ]
    if best is not None:
        iv = best.fitness_interval
        verdict = ""
        if data.seed_seeds and best.extra.get("measures") is None:
            from agents.stats import promote

            verdict = " " + promote(fitness_by_seed(best), data.seed_seeds, what="the seed").text + "."
        parts.append(f"<p>Best: <code>{html.escape(best.id)}</code> <b>{html.escape(best.name)}</b>, fitness "
                     f"{html.escape(fitness_spread(best))}"
                     + (f", 90% interval [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "")
                     + (f" (the measured seed: {_fmt(data.seed_fitness)})" if data.seed_fitness is not None else "")
                     + "." + html.escape(verdict) + "</p>")
        if best.motivation:
            parts.append(f"<blockquote>{html.escape(best.motivation.strip()[:800])}</blockquote>")
    if not data.baselines:
        parts.append("<p class='meta'>No baselines cached for this scale yet (lab/baselines/; the loop measures "
                     "them on its first run).</p>")
    for key, title in FIGURES.items():
        if key not in figures:
            continue
        rel = figures[key].relative_to(out_dir).as_posix()
        parts.append(f"<h2>{html.escape(title)}</h2><figure><img src='{html.escape(rel)}' alt='{html.escape(title)}'>"
                     f"<figcaption>{html.escape(_CAPTIONS[key])}</figcaption></figure>")
        if key == "top":
            parts.append(_table(data))
        if key == "influences" and (inf["ops_w"] or inf["cog_w"]):
            items = [f"<li>operators: {html.escape(', '.join(f'{k} ({v})' for k, v in inf['ops_w'].most_common(8)))}</li>"]
            if inf["cog_w"]:
                cog = ", ".join(f"{data.entry_titles.get(k, k)} ({v})" for k, v in inf["cog_w"].most_common(8))
                items.append(f"<li>cognition entries: {html.escape(cog)}</li>")
            parts.append("<ul>" + "".join(items) + "</ul>")
    parts.append(agents_html(data.records))
    parts.append("</body></html>")
    return "\n".join(parts)


def agents_html(records: list[Any]) -> str:
    """The report's "Agents" section: per role, the steps the model answered vs the built-in
    fallback, model calls, time per call and tokens (empty when no step was recorded)."""
    from agents.llm_session import ROLES, format_tally, tally

    t = tally(records)
    if not t:
        return ""
    rows = []
    for role in ROLES:
        if role not in t:
            continue
        f = format_tally(t[role])
        specs = ", ".join(t[role]["specs"]) or "built-in"
        rows.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in (
            role, specs, f["answered"], f["calls"], f["time"], f["tokens"])) + "</tr>")
    return ("<h2>Agents</h2><p class='meta'>Steps answered by the model vs by the built-in agent after the model "
            "could not (unreachable, unusable reply, circuit open); time is mean / max seconds per model call, "
            "failed calls included; tokens in/out, ~ = estimated.</p><table><tr><th>role</th><th>model</th>"
            "<th>steps</th><th>calls</th><th>time</th><th>tokens</th></tr>" + "".join(rows) + "</table>")


def build_report(lab: Any, out_dir: str | Path | None = None) -> Report:
    """Write the figures and ``index.html`` for ``lab`` (an open Lab, or a lab folder) into
    ``out_dir`` (default ``<lab>/report``). Returns what was written."""
    from archive.config import atomic_write_text

    opened = None
    if not hasattr(lab, "store"):
        from archive.lab import Lab

        lab = opened = Lab.open(Path(lab))
    try:
        data = collect(lab)
    finally:
        if opened is not None:
            opened.close()
    out = Path(out_dir) if out_dir is not None else data.lab_path / "report"
    out.mkdir(parents=True, exist_ok=True)
    makers = {"discovery": figure_discovery, "lineage": figure_lineage, "components": figure_components,
              "top": figure_top, "influences": figure_influences}
    figures = {name: fn(data, out / f"{name}.png") for name, fn in makers.items()}
    page = out / "index.html"
    atomic_write_text(page, render_html(data, figures, out))
    counts = dict(Counter(r.status for r in data.records))
    counts["total"] = len(data.records)
    return Report(page, figures, counts, data.best_id)
