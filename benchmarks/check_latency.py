"""Wall time of `check` for each reference mixer (median of 3), and what it measured.

Run: .venv/bin/python benchmarks/check_latency.py [--scale probe] [--repeats 3] [NAME ...]

Each run is a full `training.checker.check_file`: the static checks in this process, then a fresh
sandbox (bubblewrap, `python -I`, the harness's imports, the forked worker with its seccomp filter,
the five dynamic checks computed by the harness). Prints per mixer: the median wall time,
min/max, pass/fail of each check, the fitted time and memory exponents of the sub-quadratic
check, and the isolation mode. Timings depend on the load of this shared 2-core machine (the load
average is printed too).

Recorded (issue 12, the move to the OS sandbox with the harness/worker split), before = the
unshare-based child, after = bwrap + harness/worker, runs alternated so that both saw the same
load (load average 10-15 on the shared machine; linear_attention, deltanet, retnet, 3 runs each):

    before: median 22.4 s (18.0-32.7 s) over 9 runs
    after:  median 24.8 s (15.0-29.0 s) over 9 runs   -> 1.11x (goal <= 1.5x)

At load 0.9 the same machine measured 6.3-11.4 s per mixer before the change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_json_flag, json_output  # noqa: E402

from training.checker import check_file  # noqa: E402
from training.mixers import REFERENCE_MIXERS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(REFERENCE_MIXERS))
    ap.add_argument("--scale", default="probe")
    ap.add_argument("--repeats", type=int, default=3)
    add_json_flag(ap)
    args = ap.parse_args()
    with json_output("check_latency", args.json) as rec:
        rec.settings.update(scale=args.scale, repeats=args.repeats, statistic="median wall seconds")
        run(args, rec.figures)


def run(args: argparse.Namespace, figures: dict) -> None:
    """Check every named mixer ``args.repeats`` times; per-mixer figures go to ``figures``."""
    print(f"check latency, scale={args.scale}, median of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'mixer':<18} {'median s':>8} {'min':>6} {'max':>6}  {'verdict':<7} {'t-exp':>5} {'m-exp':>5}  "
          f"failed checks / isolation")
    for name in args.names:
        times, report = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            report = check_file(REFERENCE_MIXERS[name], args.scale)
            times.append(time.perf_counter() - t0)
        assert report is not None
        sq = next(c for c in report.checks if c.name == "subquadratic")
        failed = [c.name for c in report.checks if not c.passed]
        print(f"{name:<18} {statistics.median(times):8.2f} {min(times):6.2f} {max(times):6.2f}  "
              f"{'PASS' if report.passed else 'FAIL':<7} {sq.details.get('time_exponent', float('nan')):5.2f} "
              f"{sq.details.get('memory_exponent', float('nan')):5.2f}  {','.join(failed) or '-'} / {report.isolation}")
        sys.stdout.flush()
        figures[name] = {
            "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "passed": report.passed, "failed_checks": failed,
            "time_exponent": sq.details.get("time_exponent"), "memory_exponent": sq.details.get("memory_exponent"),
            "isolation": report.isolation,
        }


if __name__ == "__main__":
    main()
