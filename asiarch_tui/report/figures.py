"""The report's figures (matplotlib, PNG): discovery curve, lineage tree, fitness components,
top 10 against the baselines, what the winners drew on. Each ``figure_*(data, path)`` draws one
from a :class:`~asiarch_tui.report.data.ReportData` and returns the path it wrote."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from asiarch_tui.report.data import TOP_N, ReportData, influences, is_num, top_rows

_STATUS_COLOURS = {"accepted": "#2a9d8f", "failed": "#e76f51", "rejected": "#e9c46a", "too_slow": "#9b5de5",
                   "stopped_early": "#457b9d"}


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
    recs = [r for r in data.records if r.status != "accepted" or is_num(r.fitness) or r.metrics]
    if not data.scored:
        _empty(ax, "no measured experiment yet")
        _empty(ax2, "")
    else:
        order = {r.id: i for i, r in enumerate(recs)}
        pts = [(order[r.id], float(r.fitness)) for r in recs if r.status == "accepted" and is_num(r.fitness)]
        if pts:
            ax.scatter(*zip(*pts), s=18, alpha=0.65, color=_STATUS_COLOURS["accepted"], label=f"accepted ({len(pts)})",
                       zorder=3)
        # experiments without a fitness (failed, too slow, rejected, unmeasured) are no points of
        # the fitness line: ticks in the lower panel, by status
        for status in ("failed", "too_slow", "stopped_early", "rejected", "accepted"):
            ticks = [order[r.id] for r in recs if r.status == status and not is_num(r.fitness)]
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
                    (r.status == "accepted" and is_num(r.fitness) and float(r.fitness) > ref
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
        grey = [xy(i) for i, r in recs.items() if not is_num(r.fitness) and i in layout]
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
    if isinstance(s, dict) and is_num(s.get("std")) and int(s.get("n") or 0) >= 2:
        return float(s["std"])
    return 0.0


def _nseeds(m: dict[str, Any]) -> int:
    return int(m.get("n_seeds") or len(m.get("seeds") or []) or 1)


def figure_top(data: ReportData, path: Path) -> Path:
    """Heatmap of probe accuracies and bars of probe mean (and val bpb) for top 10 + baselines."""
    plt = _plt()
    rows = top_rows(data)
    probes = sorted({p for _, m, _ in rows for p, v in (m.get("probes") or {}).items() if is_num(v)})
    has_bpb = any(is_num(m.get("val_bpb")) for _, m, _ in rows)
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
            mat = np.array([[float((m.get("probes") or {}).get(p, np.nan)) if is_num((m.get("probes") or {}).get(p))
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
        vals = [float(m["probe_mean"]) if is_num(m.get("probe_mean")) else 0.0 for _, m, _ in rows]
        cols = ["#8d99ae" if b else "#2a9d8f" for _, _, b in rows]
        errs = [_std(m, "probe_mean") for _, m, _ in rows]
        ax.barh(y, vals, color=cols, xerr=errs, error_kw={"ecolor": "#333333", "capsize": 2, "lw": 0.8})
        for yi, v, e, (_, m, _) in zip(y, vals, errs, rows):
            n = _nseeds(m)
            txt = (f" {v:.3f}" + (f" ± {e:.3f} ({n})" if n >= 2 else "")) if is_num(m.get("probe_mean")) else " –"
            ax.text(v + e, yi, txt, va="center", fontsize=7)
        seed = data.baselines.get("deltanet", {}).get("probe_mean")
        if is_num(seed):
            ax.axvline(float(seed), color="#264653", ls="--", lw=1, label="seed baseline (DeltaNet)")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.04), frameon=False)
        ax.set_yticks(y)
        ax.set_yticklabels(labels if not probes else [""] * len(y), fontsize=8)
        ax.set_xlim(0, max(1.0, max(vals) * 1.15))
        ax.set_title("mean probe score (higher is better)")
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top, aligned with the heatmap's rows
        if has_bpb:
            ax = axes[k]
            vals = [float(m["val_bpb"]) if is_num(m.get("val_bpb")) else 0.0 for _, m, _ in rows]
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
