"""Discovery benchmark: a headless autonomous run of the built-in researcher from a fresh lab.

Prints experiments per hour, the time split by stage (research, check, train/evaluate, analyse,
commit, ...), the discovery curve (best fitness vs experiment number) as a plotext chart, writes it
as a PNG, and says whether the lab found a design that beats DeltaNet (the seed) on both the
validation loss and the probe mean at this scale.

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
          f"{sum(r.status == 'failed' for r in exps)} failed, {sum(r.status == 'rejected' for r in exps)} rejected)")
    print(f"wall time this run: {wall/60:.1f} min (baselines {stage_t.get('baselines', 0)/60:.1f} min); "
          f"experiments per hour (experiment time only): {3600 * n / max(exp_wall, 1e-9):.1f}")
    total = sum(v for k, v in stage_t.items() if k != "baselines") or 1.0
    print("time by stage (all experiments):")
    for k, v in sorted(stage_t.items(), key=lambda kv: -kv[1]):
        if k == "baselines":
            continue
        print(f"  {k:<10} {v:8.1f} s  {100 * v / total:5.1f}%")

    seed_fit = next((r.fitness for r in recs if (r.extra or {}).get("measures") == "0000"), None)
    # the best so far starts at the measured seed: the curve shows what the search added to it
    best_curve, best = [], (seed_fit if seed_fit is not None else float("-inf"))
    for r in exps:
        if r.status == "accepted" and r.fitness is not None:
            best = max(best, r.fitness)
        best_curve.append(best if best > float("-inf") else None)
    fits = [r.fitness if r.status == "accepted" else None for r in exps]
    print(f"seed (DeltaNet) fitness: {seed_fit}")
    print("best fitness by experiment:", ", ".join("—" if b is None else f"{b:.3f}" for b in best_curve))

    import plotext as plt

    xs = list(range(1, n + 1))
    plt.clear_figure()
    plt.plot_size(80, 20)
    plt.title("discovery: best fitness vs experiment")
    pts = [(x, b) for x, b in zip(xs, best_curve) if b is not None]
    if pts:
        plt.plot([p[0] for p in pts], [p[1] for p in pts], label="best")
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
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="C3", label="best so far")
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

    # does a design beat DeltaNet on both the validation loss and the probes?
    l0, b0 = seed_m.get("val_loss"), seed_m.get("probe_mean")
    winners = []
    for r in exps:
        m = r.metrics or {}
        if r.status != "accepted" or m.get("probe_mean") is None or b0 is None:
            continue
        loss_ok = l0 is None or (m.get("val_loss") is not None and m["val_loss"] < l0)
        if loss_ok and m["probe_mean"] > b0:
            winners.append(r)
    print(f"DeltaNet at this scale: val_loss {l0}, probe_mean {b0}")
    if winners:
        w = max(winners, key=lambda r: r.fitness or 0)
        print(f"{len(winners)} design(s) beat DeltaNet on both; fittest: {w.id} {w.name} "
              f"val_loss {w.metrics.get('val_loss')} probe_mean {w.metrics.get('probe_mean'):.3f} "
              f"fitness {w.fitness:.3f}")
    else:
        print("no design beat DeltaNet on both the validation loss and the probes in this run")
    summary = {"experiments": n, "wall_s": round(wall, 1), "best": best_curve[-1] if best_curve else None,
               "seed": seed_fit, "winners": [r.id for r in winners]}
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
