"""Experiments per hour of the research loop with 1 and with 2 evaluations in flight.

    .venv/bin/python benchmarks/parallel.py [--experiments 4] [--scale probe] [--factor 1.0]
                                            [--executor local|ray] [--concurrency 1 2]
                                            [--researcher builtin|standin]

For each concurrency N the script creates a fresh lab (built-in researcher, analyst and judge; the
lexical hash embedder, so the figures measure the loop and the evaluations, not an embedding
model), copies into it the seed baseline measured once up front (so every run starts from the same
yardstick and no run pays for it), and runs the real loop (``agents.loop.Loop``) for
``--experiments`` experiments with ``concurrency=N``: sampling, research and novelty sequential on
the driver, checks and evaluations in sandboxed child processes (``local``) or Ray tasks (``ray``,
a local Ray instance started here with as many CPUs as the machine has), commits in completion
order. It prints, per N, the wall time, experiments per hour, the mean evaluation time and how
many finished accepted, and the speed-up of each N over the first.

The figures depend on the machine and on what else runs on it: evaluations are CPU-bound, so N
evaluations in flight help only as far as there are free cores (each sandbox child uses one
thread). ``--factor`` scales the probes' steps down (``training.scales.scaled_down``) for a quick
run; 1.0 is the real probe scale. Runs do a fixed amount of work (there is no time budget) and
the sandbox's wall-time limit is raised, so a loaded machine slows the runs down instead of
cutting them short.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_json_flag, json_output  # noqa: E402


def _scale(name: str, factor: float):
    """The scale, its steps multiplied by ``factor``."""
    from training.scales import get_scale, scaled_down

    return get_scale(name) if factor >= 1.0 else scaled_down(name, factor)


def _limits():
    from training.sandbox import Limits

    return Limits(wall_s=1800.0, cpu_s=3600.0)


def _lab(path: Path, scale_name: str):
    from archive.config import LabConfig
    from archive.embed import HashEmbedder
    from archive.lab import Lab

    cfg = LabConfig()
    cfg.loop.scale = scale_name
    cfg.loop.novelty_threshold = 0.95
    return Lab.init(path, config=cfg, embedder=HashEmbedder())


def measure(n: int, experiments: int, scale, baselines: dict, root: Path, executor_kind: str,
            researcher: str = "builtin") -> dict:
    """Run the loop with ``n`` evaluations in flight; return its figures."""
    from agents.engineer import SandboxExecutor
    from agents.loop import Loop, baseline_key

    lab = _lab(root / f"lab-{n}", scale.name)
    bdir = lab.path / "baselines"
    bdir.mkdir(exist_ok=True)
    (bdir / f"{baseline_key(scale)}.json").write_text(json.dumps(baselines))
    if executor_kind == "ray":
        from agents.ray_executor import RayExecutor

        executor = RayExecutor(scale, _limits(), num_cpus=1)
    else:
        executor = SandboxExecutor(scale, _limits())
    kw = {}
    if researcher == "standin":
        from tests.standin import StandInResearcher

        kw["researcher"] = StandInResearcher()
    loop = Loop(lab, llm="builtin", scale=scale, experiments=experiments, executor=executor,
                baselines=("deltanet",), concurrency=n, **kw)
    loop.baselines()  # cached: nothing is measured here
    t0 = time.perf_counter()
    summary = loop.run()
    wall = time.perf_counter() - t0
    recs = [lab.store.get(e["id"]) for e in summary.experiments]
    evals = [r.timings.get("evaluate") for r in recs if r.timings.get("evaluate")]
    out = {"concurrency": n, "experiments": len(recs), "wall_s": wall,
           "per_hour": 3600.0 * len(recs) / wall if wall > 0 else 0.0,
           "mean_eval_s": statistics.mean(evals) if evals else float("nan"),
           "accepted": sum(r.status == "accepted" for r in recs), "state": summary.state}
    lab.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=4, help="experiments per run (default 4)")
    ap.add_argument("--scale", default="probe", help="evaluation scale (default probe)")
    ap.add_argument("--factor", type=float, default=1.0, help="scale the probe steps down by this factor")
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--researcher", choices=("builtin", "standin"), default="builtin",
                    help="the built-in evolutionary researcher, or the tests' stand-in (edits one "
                         "hyper-parameter of the DeltaNet file per proposal)")
    ap.add_argument("--keep", action="store_true", help="keep the labs (printed path)")
    add_json_flag(ap)
    args = ap.parse_args()
    with json_output("parallel", args.json) as rec:
        rec.settings.update(experiments=args.experiments, scale=args.scale, factor=args.factor,
                            executor=args.executor, concurrency=args.concurrency, researcher=args.researcher)
        run(args, rec.figures)


def run(args: argparse.Namespace, figures: dict) -> None:
    """Measure the seed once, then the loop at each concurrency; rows go to ``figures``."""

    from agents.engineer import SandboxExecutor
    from training.mixers import REFERENCE_MIXERS, SEED_MIXER

    scale = _scale(args.scale, args.factor)
    root = Path(tempfile.mkdtemp(prefix="asiarch-parallel-"))
    ray_started = False
    try:
        if args.executor == "ray":
            import ray

            ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, _temp_dir=tempfile.mkdtemp(prefix="rb"))
            ray_started = True
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; scale {scale.name} "
              f"(factor {args.factor:g}); executor {args.executor}; researcher {args.researcher}; "
              f"{args.experiments} experiments per run")
        t = time.perf_counter()
        seed = SandboxExecutor(scale, _limits()).evaluate(Path(REFERENCE_MIXERS[SEED_MIXER]),
                                                         root / "seed-baseline", 0, None)
        if not seed.ok:
            sys.exit(f"the seed baseline failed: {seed.error}")
        print(f"seed baseline measured once in {time.perf_counter() - t:.1f} s (probe mean "
              f"{seed.metrics.get('probe_mean'):.3f})")
        figures["seed_baseline_s"] = round(time.perf_counter() - t, 2)
        rows = []
        figures["runs"] = rows
        for n in args.concurrency:
            r = measure(n, args.experiments, scale, {SEED_MIXER: seed.metrics}, root, args.executor,
                        args.researcher)
            rows.append(r)
            print(f"concurrency {n}: {r['experiments']} experiments in {r['wall_s']:.1f} s = "
                  f"{r['per_hour']:.1f} experiments/hour (mean evaluation {r['mean_eval_s']:.1f} s; "
                  f"{r['accepted']} accepted; loop {r['state']}); load average {os.getloadavg()[0]:.1f}")
        base = rows[0]["per_hour"] if rows and rows[0]["per_hour"] else None
        print()
        print(f"{'concurrency':>11} {'exp/hour':>9} {'speed-up':>9} {'wall s':>8} {'mean eval s':>12}")
        for r in rows:
            sp = f"{r['per_hour'] / base:.2f}x" if base else "n/a"
            print(f"{r['concurrency']:>11} {r['per_hour']:>9.1f} {sp:>9} {r['wall_s']:>8.1f} {r['mean_eval_s']:>12.1f}")
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        if args.keep:
            print(f"labs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
