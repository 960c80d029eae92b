"""Discovery benchmark: a headless autonomous run of the built-in researcher from a fresh lab.

Prints experiments per hour, the time split by stage (research, check, train/evaluate, analyse,
commit, ...), the discovery curve (the lower bound of the best design's fitness interval vs
experiment number; ``best`` moves only by the promotion rule of agents.stats) as a plotext chart,
writes it as a PNG, reports the best design's fitness interval and whether it beats DeltaNet (the
seed) by the promotion rule (on the fitness, and per metric on the validation loss and the probe
mean, seed by seed), and how many evaluations successive halving spent against 3 seeds for all.

    python benchmarks/discovery.py [--experiments 20] [--scale explore] [--lab DIR] [--out DIR]

A lab folder that already exists is resumed (the run continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_json_flag, json_output  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=20)
    ap.add_argument("--scale", default="explore")
    ap.add_argument("--lab", type=Path, default=None, help="lab folder (default: a new temporary one)")
    ap.add_argument("--out", type=Path, default=None, help="where the PNG goes (default: the lab)")
    ap.add_argument("--baselines", default="deltanet,gated_deltanet,linear_attention",
                    help="reference mixers measured as yardsticks (comma-separated; 'all' for six)")
    ap.add_argument("--seed", type=int, default=0)
    add_json_flag(ap)
    args = ap.parse_args(argv)
    with json_output("discovery", args.json) as rec:
        rec.settings.update(experiments=args.experiments, scale=args.scale, baselines=args.baselines,
                            seed=args.seed, lab=str(args.lab) if args.lab else None)
        return run(args, rec.figures)


def run(args: argparse.Namespace, figures: dict) -> int:
    """The discovery run and its report; the summary figures go to ``figures``."""

    from agents.events import ExperimentFinished, StageChanged
    from agents.loop import Loop
    from archive.lab import Lab

    lab_dir = args.lab or Path(tempfile.mkdtemp(prefix="asiarch-discovery-")) / "lab"
    if Lab.is_lab(lab_dir):
        lab = Lab.open(lab_dir)
    else:
        from archive.config import LabConfig

        cfg = LabConfig()
        cfg.loop.scale = args.scale  # written to the lab's asiarch.toml, so `status` shows it
        lab = Lab.init(lab_dir, config=cfg)
    baselines = None if args.baselines == "all" else tuple(args.baselines.split(","))
    done_before = sum(1 for r in lab.store.all() if r.researcher == "builtin" and r.genome)
    loop = Loop(lab, llm="builtin", mode="autonomous", scale=args.scale,
                experiments=max(0, args.experiments - done_before), baselines=baselines, seed=args.seed)

    t_start = time.monotonic()
    stage_t: dict[str, float] = defaultdict(float)

    def on_event(e) -> None:
        if isinstance(e, StageChanged) and e.status in ("finished", "failed") and e.duration_s:
            if e.stage == "baseline":
                stage_t["baselines"] += e.duration_s
        if isinstance(e, ExperimentFinished):
            el = time.monotonic() - t_start
            print(f"[{el/60:6.1f} min] {e.exp_id} {e.name:<40} {e.status:<9} fitness "
                  f"{'—' if e.fitness is None else f'{e.fitness:.3f}'}", flush=True)

    loop.subscribe(on_event)
    print(f"lab: {lab_dir}  scale: {args.scale}  experiments: {args.experiments}", flush=True)
    loop.run()
    wall = time.monotonic() - t_start

    recs = sorted(lab.store.all(), key=lambda r: r.id)
    exps = [r for r in recs if r.genome and r.researcher == "builtin"]
    for r in exps:
        for k, v in (r.timings or {}).items():
            if k != "total":
                stage_t[k] += float(v)
    seed_m = (loop.baselines() or {}).get("deltanet") or {}

    print()
    n = len(exps)
    exp_wall = sum(float((r.timings or {}).get("total", 0.0)) for r in exps)
    print(f"experiments: {n} ({sum(r.status == 'accepted' for r in exps)} accepted, "
          f"{sum(r.status == 'failed' for r in exps)} failed, {sum(r.status == 'too_slow' for r in exps)} too slow, "
          f"{sum(r.status == 'stopped_early' for r in exps)} stopped early, "
          f"{sum(r.status == 'rejected' for r in exps)} rejected)")
    print(f"wall time this run: {wall/60:.1f} min (baselines {stage_t.get('baselines', 0)/60:.1f} min); "
          f"experiments per hour (experiment time only): {3600 * n / max(exp_wall, 1e-9):.1f}")
    total = sum(v for k, v in stage_t.items() if k != "baselines") or 1.0
    print("time by stage (all experiments):")
    for k, v in sorted(stage_t.items(), key=lambda kv: -kv[1]):
        if k == "baselines":
            continue
        print(f"  {k:<10} {v:8.1f} s  {100 * v / total:5.1f}%")

    from agents.seeds import per_seed, versus
    from agents.stats import promote
    from archive.lineage import best_over_time

    seed_rec = next((r for r in recs if (r.extra or {}).get("measures") == "0000"), None)
    seed_fit = seed_rec.fitness if seed_rec is not None else None
    # best over time as the archive decided it (promotion rule), plotted at its lower bound; it
    # starts at the measured seed, so the curve shows what the search added to it
    timeline = {d["id"]: d for d in best_over_time(lab.index.all())}  # re-scored figures
    best_curve = [timeline[r.id]["lower"] for r in exps]
    fits = [r.fitness if r.status == "accepted" else None for r in exps]
    print(f"seed (DeltaNet) fitness: {seed_fit} interval {seed_rec.fitness_interval if seed_rec else None}")
    print("best design's lower bound by experiment:",
          ", ".join("—" if b is None else f"{b:.3f}" for b in best_curve))
    evals = sum(len(per_seed(r.metrics)) for r in exps)
    measured = sum(1 for r in exps if r.metrics)
    print(f"evaluations: {evals} for {measured} evaluated designs (3 seeds for every design: {3 * measured}; "
          f"successive halving saved {3 * measured - evals})")

    import plotext as plt

    xs = list(range(1, n + 1))
    plt.clear_figure()
    plt.plot_size(80, 20)
    plt.title("discovery: best fitness vs experiment")
    pts = [(x, b) for x, b in zip(xs, best_curve) if b is not None]
    if pts:
        plt.plot([p[0] for p in pts], [p[1] for p in pts], label="best (lower bound)")
    sc = [(x, f) for x, f in zip(xs, fits) if f is not None]
    if sc:
        plt.scatter([p[0] for p in sc], [p[1] for p in sc], label="each")
    if seed_fit is not None:
        plt.hline(seed_fit)
    plt.show()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as mpl

    fig, ax = mpl.subplots(figsize=(7, 4))
    if sc:
        ax.scatter([p[0] for p in sc], [p[1] for p in sc], s=18, alpha=0.6, label="each experiment")
    if pts:
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="C3",
                label="best so far (lower bound of its interval)")
    if seed_fit is not None:
        ax.axhline(seed_fit, color="gray", ls="--", label="seed (DeltaNet)")
    ax.set_xlabel("experiment")
    ax.set_ylabel("fitness")
    ax.set_title(f"asiarch discovery curve ({args.scale}, built-in researcher)")
    ax.legend()
    fig.tight_layout()
    out = (args.out or lab_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "discovery.png"
    fig.savefig(png, dpi=120)
    print(f"discovery curve: {png}")

    # does the best design beat DeltaNet, by the promotion rule (seed by seed, beyond noise)?
    best = lab.store.best()
    seed_fs = {int(k): v for k, v in (seed_rec.fitness_seeds or {}).items()} if seed_rec else {}
    verdict = None
    if best is not None and seed_rec is not None and best.id != seed_rec.id:
        verdict = promote({int(k): v for k, v in best.fitness_seeds.items()}, seed_fs, what="the seed")
    per_metric = {}
    if best is not None and seed_m:
        for key, higher in (("val_loss", False), ("probe_mean", True)):
            if (best.metrics or {}).get(key) is not None and seed_m.get(key) is not None:
                per_metric[key] = versus(best.metrics, seed_m, key, higher).outcome
    print(f"DeltaNet at this scale: val_loss {seed_m.get('val_loss')}, probe_mean {seed_m.get('probe_mean')} "
          f"({seed_m.get('n_seeds', 1)} seeds)")
    if best is None:
        print("no best design yet")
    else:
        print(f"best: {best.id} {best.name} fitness {best.fitness} interval {best.fitness_interval} "
              f"({len(best.fitness_seeds)} seeds)")
        print("beats the seed by the promotion rule: "
              + ("— (the best is the seed itself)" if verdict is None else f"{verdict.promoted} ({verdict.text})")
              + ("; per metric: " + ", ".join(f"{k} {v}" for k, v in per_metric.items()) if per_metric else ""))
    winners = [r.id for r in exps if r.status == "accepted" and r.fitness_seeds and seed_fs
               and promote({int(k): v for k, v in r.fitness_seeds.items()}, seed_fs).promoted]
    summary = {"experiments": n, "wall_s": round(wall, 1), "evaluations": evals,
               "best": best.id if best else None, "best_fitness": best.fitness if best else None,
               "best_interval": best.fitness_interval if best else None,
               "best_lower_bound": best_curve[-1] if best_curve else None,
               "seed": seed_fit, "seed_interval": seed_rec.fitness_interval if seed_rec else None,
               "beats_seed": verdict.promoted if verdict else False,
               "beats_seed_per_metric": per_metric, "winners": winners}
    figures.update(summary)
    figures.update(
        experiments_per_hour=round(3600 * n / max(exp_wall, 1e-9), 2) if n else None,
        experiment_wall_s=round(exp_wall, 1), accepted=sum(r.status == "accepted" for r in exps),
        failed=sum(r.status == "failed" for r in exps), stage_s={k: round(v, 2) for k, v in stage_t.items()},
        best_curve=best_curve,
    )
    if not args.json:  # the summary line it has always printed (with --json the record carries it)
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
