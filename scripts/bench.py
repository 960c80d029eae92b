"""Run the benchmarks with ``--json``, append their records to benchmarks/results/, print a table.

    .venv/bin/python scripts/bench.py [NAME ...] [--quick] [--timeout S] [--results DIR] [-- ARGS]

NAME is a file in benchmarks/ without ``.py`` (default: all of them). Each benchmark runs in its
own process; its report streams to the terminal (stderr) and its one JSON line (see
benchmarks/_common.py) is appended to ``benchmarks/results/<name>.jsonl``. ``--quick`` runs each
with its smallest settings (a smoke test of every benchmark in minutes, not a measurement).
At the end a table lists each run's figures, flattened to ``dotted.keys``.
Arguments after ``--`` go to every benchmark run. ``make bench`` runs this with all benchmarks;
``make bench BENCH="ops_throughput --quick"`` selects and passes options.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"

# the smallest settings of each benchmark (``--quick``)
QUICK_ARGS: dict[str, list[str]] = {
    "archive_scale": ["--quick"],
    "bf16": ["--steps", "2", "--only", "deltanet"],
    "baseline_ranking": ["--scale", "probe", "--seeds", "1", "--only", "deltanet", "--threads", "1"],
    "check_latency": ["--repeats", "1", "deltanet"],
    "corpus_recall": ["--embedder", "hash"],
    "first_result": ["--timeout", "900"],
    "proxy_validity": ["--scales", "probe", "--seeds", "1", "--factor", "0.1", "--only", "deltanet"],
    "discovery": ["--experiments", "1", "--scale", "probe", "--baselines", "deltanet"],
    "loop_overhead": ["--experiments", "1", "--scale-factor", "0.1", "--embedder", "hash"],
    "ops_throughput": ["--lengths", "256", "--repeats", "3"],
    "parallel": ["--experiments", "1", "--factor", "0.1", "--concurrency", "1", "--researcher", "standin"],
}


def benchmarks() -> list[str]:
    """The benchmark names: every benchmarks/*.py not starting with an underscore."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))


def run_one(name: str, extra: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run one benchmark with ``--json``; its record (or None) and a status word."""
    cmd = [sys.executable, str(BENCH_DIR / f"{name}.py"), *extra, "--json"]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f} s"
    record = None
    for line in proc.stdout.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            print(line, file=sys.stderr)  # a stray stdout line: show it, do not lose it
            continue
        if isinstance(obj, dict) and obj.get("benchmark"):
            record = obj
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    if record is not None:
        record.setdefault("run", {})["seconds"] = round(time.monotonic() - t0, 1)
        record["run"]["status"] = status
        record["run"]["args"] = extra
    return record, status


def flatten(x: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Scalar leaves of nested dicts as (dotted key, value); short lists of scalars are kept whole."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(x, list):
        if len(x) <= 8 and all(not isinstance(v, (dict, list)) for v in x):
            yield prefix, x
        else:
            for i, v in enumerate(x):
                yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, x


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def print_table(records: list[tuple[str, dict | None, str]]) -> None:
    """One block per benchmark: machine facts, then its figures, one per line."""
    print()
    print(f"{'benchmark':<18} {'figure':<64} value")
    print("-" * 100)
    for name, rec, status in records:
        if rec is None:
            print(f"{name:<18} {'(no record)':<64} {status}")
            continue
        m = rec.get("machine", {})
        load = m.get("load_average")
        print(f"{name:<18} {'(run)':<64} {status}, {rec.get('run', {}).get('seconds')} s, {rec.get('utc')}, "
              f"{m.get('cpu_model')} x{m.get('logical_cpus')}, torch {m.get('torch_version')} "
              f"({m.get('torch_threads')} threads), load {load}")
        for key, value in flatten(rec.get("figures", {})):
            print(f"{'':<18} {key:<64} {fmt(value)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(benchmarks())})")
    ap.add_argument("--quick", action="store_true", help="each benchmark's smallest settings")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per benchmark (default 4 h)")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "results", help="where the .jsonl files go")
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    names = args.names or benchmarks()
    unknown = sorted(set(names) - set(benchmarks()))
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(benchmarks())}")
    args.results.mkdir(parents=True, exist_ok=True)
    records = []
    for name in names:
        extra = (QUICK_ARGS.get(name, []) if args.quick else []) + passthrough
        rec, status = run_one(name, extra, args.timeout)
        if rec is not None:
            with (args.results / f"{name}.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
        records.append((name, rec, status))
    print_table(records)
    print(f"\nrecords appended to {args.results}/<benchmark>.jsonl")
    return 0 if all(s == "ok" for _, _, s in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
