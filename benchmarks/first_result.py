"""First-result benchmark: ``asiarch-tui init`` + the loop's first landed experiment at the demo
scale, timed as a new user would see it (wall clock), optionally beside CPU hogs.

    python benchmarks/first_result.py [--hogs N] [--lab DIR] [--timeout S] [--json]

Runs the installed command line (``asiarch-tui`` next to this interpreter, else
``python -m asiarch_tui.cli``): ``init LAB`` then ``run LAB --headless --llm builtin`` and stops
the run as soon as the first experiment after the seed has been committed (the remaining
reference baselines are comparisons measured later; they do not block the first result). Prints
the wall seconds of init, of the seed's measurement (the yardstick: experiments wait for it), of
the first experiment and in total, the CPU seconds of the evaluations (from their metrics), the
load average before and after, the status and fitness of the first experiment, and the seed's
probe mean. ``--hogs N`` starts N busy-loop processes beside it (ended with the benchmark);
``--json`` prints one JSON line instead. The issue's goal: <= 120 s in total on a quiet 2-core
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOG = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("asiarch-tui")
    return [str(script)] if script.exists() else [sys.executable, "-m", "asiarch_tui.cli"]


def _events(path: Path) -> list[dict]:
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(lab: Path, timeout: float, env: dict[str, str]) -> dict:
    """Init + run until the first landed experiment; returns the figures."""
    cli = _cli()
    out: dict = {"load_avg_before": _load(), "cli": " ".join(cli)}
    t0_wall = time.time()
    t0 = time.monotonic()
    r = subprocess.run([*cli, "init", str(lab)], capture_output=True, text=True, env=env, timeout=timeout)
    out["init_s"] = round(time.monotonic() - t0, 2)
    if r.returncode != 0:
        raise SystemExit(f"init failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    t_run = time.monotonic()
    proc = subprocess.Popen([*cli, "run", str(lab), "--headless", "--llm", "builtin", "--experiments", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    first = None
    seed_done = None
    try:
        while time.monotonic() - t0 < timeout:
            evs = _events(lab / "events.jsonl")
            for e in evs:
                if e.get("kind") == "BaselineProgress" and e.get("seed") and e.get("status") == "finished" \
                        and seed_done is None:
                    seed_done = e
                if e.get("kind") == "ExperimentFinished" and e.get("reason") != "seed measured":
                    first = e
                    break
            if first is not None or proc.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        t_end = time.monotonic()
        if proc.poll() is None:  # the first result is in: stop the run (ours, by its process group)
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    log = proc.stdout.read() if proc.stdout else ""
    if first is None:
        raise SystemExit(f"no experiment landed within {timeout:.0f} s; the run said:\n{log[-3000:]}")
    evs = _events(lab / "events.jsonl")
    ts0 = next((e["ts"] for e in evs), None)
    seed_start = next((e["ts"] for e in evs if e.get("kind") == "BaselineProgress" and e.get("seed")), None)
    out["total_s"] = round(first["ts"] - t0_wall, 2)  # init + run start-up + seed + first experiment
    out["run_to_first_s"] = round(first["ts"] - ts0, 2) if ts0 else None
    if seed_start is not None and seed_done is not None:
        out["seed_measurement_s"] = round(seed_done["ts"] - seed_start, 2)
        out["first_experiment_s"] = round(first["ts"] - seed_done["ts"], 2)
    base = json.loads((lab / "baselines" / "demo.json").read_text()).get("deltanet", {})
    out.update(seed_status=base.get("status"), seed_probe_mean=base.get("probe_mean"),
               seed_cpu_s=base.get("cpu_seconds"), seed_eval_wall_s=base.get("wall_seconds"))
    m = first.get("metrics") or {}
    out.update(first_id=first.get("exp_id"), first_status=first.get("status"), first_fitness=first.get("fitness"),
               first_probe_mean=m.get("probe_mean"), first_cpu_s=m.get("cpu_seconds"), first_reason=first.get("reason"))
    out["load_avg_after"] = _load()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", type=int, default=0, help="busy-loop processes beside the run (default 0)")
    ap.add_argument("--lab", type=Path, default=None, help="lab folder to create (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    ap.add_argument("--json", action="store_true", help="print one JSON line (figures + machine facts)")
    args = ap.parse_args(argv)
    tmp = None
    if args.lab is None:
        tmp = Path(tempfile.mkdtemp(prefix="asiarch-first-"))
        lab = tmp / "lab"
    else:
        lab = args.lab
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(s=args.timeout + 60)]) for _ in range(args.hogs)]
    try:
        out = run(lab, args.timeout, env)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    out["hogs"] = args.hogs
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import JsonRecord

        rec = JsonRecord("first_result")
        rec.settings.update(hogs=args.hogs, timeout=args.timeout)
        rec.figures.update(out)
        print(rec.line())
        return 0
    print(f"first result at the demo scale ({args.hogs} busy loop(s) beside it; load avg before "
          f"{out['load_avg_before']}, after {out['load_avg_after']})")
    print(f"  init                 {out['init_s']:7.1f} s wall")
    if "seed_measurement_s" in out:
        print(f"  seed measurement     {out['seed_measurement_s']:7.1f} s wall ({out['seed_cpu_s']} CPU s in the "
              f"evaluation; status {out['seed_status']}, probe mean {out['seed_probe_mean']})")
        print(f"  first experiment     {out['first_experiment_s']:7.1f} s wall ({out['first_cpu_s']} CPU s in the "
              f"evaluation)")
    print(f"  total                {out['total_s']:7.1f} s wall (goal on a quiet 2-core machine: <= 120 s)")
    print(f"  experiment {out['first_id']}: {out['first_status']}, fitness {out['first_fitness']}, "
          f"probe mean {out['first_probe_mean']}" + (f" ({out['first_reason']})" if out.get("first_reason") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
