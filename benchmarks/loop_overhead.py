"""The research loop's own overhead per experiment, split by stage, next to training.

A scripted LLM server (tests/fake_llm_server.py, on 127.0.0.1) answers instantly as Researcher,
Analyst and Judge through the real ``ollama`` client; checks and evaluations run for real in the
sandbox at the probe scale (``--scale-factor`` < 1 shortens training for a quick look). The lab
uses the default embedder (all-MiniLM-L6-v2 through fastembed) for the novelty index.

Overhead = sampling + prompt building and the (instant) LLM calls + novelty + analysis + judge +
score + commit + event delivery + the engineer's bookkeeping; training = check + evaluate (the
sandbox children). The figure that matters is overhead / training.

    .venv/bin/python benchmarks/loop_overhead.py [--experiments 2] [--scale-factor 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_json_flag, json_output  # noqa: E402
from agents.events import Event, StageChanged  # noqa: E402
from agents.loop import Loop  # noqa: E402
from tests.standin import HYPERPARAMETERS, set_default  # noqa: E402
from tests.fake_llm_server import FakeLLMServer, ScriptedResponder  # noqa: E402

OVERHEAD_STAGES = ("sample", "research", "novelty", "analyse", "judge", "score", "commit", "engineer_overhead")
TRAINING_STAGES = ("check", "evaluate", "seeds")


def _proposals(seed_code: str) -> list[dict[str, str]]:
    out = []
    for name, (values, why) in HYPERPARAMETERS.items():
        for v in values:
            code = set_default(seed_code, name, v)
            if code is None or code == seed_code:
                continue
            out.append({"name": f"DeltaNet-{name}-{v}",
                        "motivation": f"Experiment on {name} = {v!r}: {why}. Variant {len(out)}.",
                        "code": code})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=2)
    ap.add_argument("--scale-factor", type=float, default=1.0)
    ap.add_argument("--embedder", default=None, help="e.g. hash (default: the lab's fastembed model)")
    add_json_flag(ap)
    args = ap.parse_args(argv)
    with json_output("loop_overhead", args.json) as rec:
        rec.settings.update(experiments=args.experiments, scale="probe", scale_factor=args.scale_factor,
                            embedder=args.embedder or "default")
        return run(args, rec.figures)


def run(args: argparse.Namespace, figures: dict) -> int:
    """Run the loop against the scripted LLM; per-stage means go to ``figures``."""

    from archive.config import LabConfig
    from archive.lab import Lab
    from training.mixers import REFERENCE_MIXERS
    from training.scales import get_scale, scaled_down

    scale = get_scale("probe") if args.scale_factor == 1.0 else scaled_down("probe", args.scale_factor)
    seed_code = Path(REFERENCE_MIXERS["deltanet"]).read_text()
    resp = ScriptedResponder(default=lambda role, req: {
        "analyst": {"design_evaluation": "d", "results": "r", "expectation_vs_reality": "e", "explanation": "x",
                    "insights": "i", "problem": "mqar accuracy stays low while the other probes are learned"},
        "judge": {"performance": 6, "innovation": 5, "complexity": 7, "reason": "ok"},
    }.get(role, {}))
    resp.add("researcher", *_proposals(seed_code))
    with FakeLLMServer(resp, lifetime_s=3600) as srv, tempfile.TemporaryDirectory() as tmp:
        cfg = LabConfig()
        cfg.loop.scale = "probe"
        emb = None
        if args.embedder:
            from archive.embed import get_embedder

            emb = get_embedder(args.embedder)
        lab = Lab.init(Path(tmp) / "lab", config=cfg, embedder=emb)
        loop = Loop(lab, llm=f"ollama:bench@{srv.url}", scale=scale, experiments=args.experiments,
                    baselines=("deltanet",), backoff_s=0)
        # time spent delivering events (log file + subscribers)
        emit_time = {"s": 0.0, "n": 0}
        orig_emit = loop.bus.emit

        def timed_emit(ev: Event) -> None:
            t0 = time.perf_counter()
            orig_emit(ev)
            emit_time["s"] += time.perf_counter() - t0
            emit_time["n"] += 1

        loop.bus.emit = timed_emit  # type: ignore[method-assign]
        commit_s: dict[str, float] = {}
        loop.subscribe(lambda e: commit_s.__setitem__(e.exp_id, e.duration_s or 0.0)
                       if isinstance(e, StageChanged) and e.stage == "commit" and e.status == "finished" else None)
        t0 = time.perf_counter()
        summary = loop.run()
        wall = time.perf_counter() - t0
        recs = [lab.store.get(e["id"]) for e in summary.experiments]
    if not recs:
        print("no experiment ran", file=sys.stderr)
        return 1
    n = len(recs)
    per: dict[str, list[float]] = {}
    for r in recs:
        t = dict(r.timings)
        t["commit"] = commit_s.get(r.id, 0.0)
        for k in OVERHEAD_STAGES + TRAINING_STAGES:
            per.setdefault(k, []).append(float(t.get(k, 0.0)))
    events_per = emit_time["s"] / max(1, n)
    print(f"loop overhead at scale {scale.name} (scale factor {args.scale_factor}), {n} experiment(s), "
          f"scripted LLM, {emit_time['n']} events; whole run {wall:.1f} s (incl. the baseline)")
    print(f"{'stage':<20}{'mean s':>10}{'max s':>10}")
    over = 0.0
    for k in OVERHEAD_STAGES:
        m = statistics.mean(per[k])
        over += m
        print(f"{k:<20}{m:>10.3f}{max(per[k]):>10.3f}")
    print(f"{'(events, inside the above)':<20}{events_per:>10.3f}")
    train = 0.0
    for k in TRAINING_STAGES:
        m = statistics.mean(per[k])
        train += m
        print(f"{k + ' (training)':<20}{m:>10.3f}{max(per[k]):>10.3f}")
    print(f"overhead per experiment {over:.3f} s; check+evaluate {train:.3f} s; ratio {over / max(train, 1e-9):.4f}")
    statuses = [r.status for r in recs]
    print("statuses:", ", ".join(statuses))
    figures.update(
        experiments=n, wall_s=round(wall, 2), overhead_s=round(over, 4), training_s=round(train, 3),
        overhead_ratio=round(over / max(train, 1e-9), 5), events_s=round(events_per, 4),
        stage_mean_s={k: round(statistics.mean(v), 4) for k, v in per.items()}, statuses=statuses,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
