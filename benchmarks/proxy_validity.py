"""Proxy validity: do our cheap scales rank the reference mixers the way the literature does?

    .venv/bin/python benchmarks/proxy_validity.py [--scales probe,explore] [--seeds 3] [--lm-only]
        [--factor 1.0] [--threads 1] [--only a,b] [--json FILE]

The six reference mixers (training/mixers) are evaluated at the probe and at the explore scale on
3 seeds each (36 evaluations at the default setting: about an hour of CPU on one thread, more
wall time on a loaded machine; ``--factor 0.1`` runs every probe and the LM for a tenth of their
steps, a smoke test whose ranking means little). For each scale the mixers are ranked by their
mean over seeds with the spread (std and the 90% t interval of ``agents.stats``), and the ranking
is compared with the literature's order by Kendall's tau:

* Recall (ranked by the mean probe accuracy at both scales): softmax attention > Gated DeltaNet
  >= DeltaNet > GLA > RetNet >= linear attention. Sources: Arora et al., "Zoology: Measuring and
  Improving Recall in Efficient Language Models" (2023; MQAR: attention solves it, gated/decayed
  linear recurrences trail, plain linear attention is worst); Yang et al., "Parallelizing Linear
  Transformers with the Delta Rule over Sequence Length" (2024; DeltaNet above GLA/RetNet on MQAR
  and recall tasks); Yang et al., "Gated Delta Networks: Improving Mamba2 with Delta Rule" (2024;
  Gated DeltaNet at or above DeltaNet on recall-intensive tasks).
* Language modelling (ranked by validation bits per byte at explore, lower is better):
  Gated DeltaNet < DeltaNet <= softmax attention < GLA < RetNet < linear attention. Sources: the
  Gated DeltaNet paper (Gated DeltaNet ahead of DeltaNet and Transformer++ in perplexity at 1.3B
  parameters), the GLA paper (Yang et al., "Gated Linear Attention Transformers with
  Hardware-Efficient Training", 2023; GLA ahead of RetNet), and Katharopoulos et al.,
  "Transformers are RNNs" (2020; linear attention clearly behind softmax attention). This order
  is approximate: at 1B+ parameters the gaps between the first four are small.

A ranking is also checked for separation: the top mixer's interval must not overlap the second's,
and the bottom mixer's not the one above it. The script measures; it never changes a probe (and a
probe must never be tuned to a particular hidden design). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_json_flag, json_output  # noqa: E402

from agents.stats import summarize  # noqa: E402
from training.evaluate import evaluate_references  # noqa: E402
from training.scales import get_scale, scaled_down  # noqa: E402

#: The literature's order on recall (best first); see the module doc for the sources.
RECALL_ORDER = ["softmax_attention", "gated_deltanet", "deltanet", "gla", "retnet", "linear_attention"]
#: The literature's (approximate) order on language-modelling loss (best first).
LM_ORDER = ["gated_deltanet", "deltanet", "softmax_attention", "gla", "retnet", "linear_attention"]


def kendall_tau(measured: list[str], reference: list[str]) -> float | None:
    """Kendall's tau-a between two orders of the same names (1 = same order, -1 = reversed);
    names missing from either are ignored; None with fewer than two shared names."""
    names = [n for n in measured if n in reference]
    if len(names) < 2:
        return None
    pos = {n: i for i, n in enumerate(reference)}
    conc = disc = 0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if pos[names[i]] < pos[names[j]]:
                conc += 1
            else:
                disc += 1
    return (conc - disc) / (conc + disc)


def rank(results: list[dict], key: str, higher_is_better: bool) -> list[dict]:
    """``[{name, mean, std, lo, hi, n}]`` ranked best first by the mean of ``key`` over seeds
    (mixers without a value last)."""
    rows = []
    for r in results:
        s = summarize(run.get(key) for run in r.get("runs", []) if run.get("status") == "ok")
        rows.append({"name": r["name"], "mean": s.mean if s else None, "std": s.std if s else None,
                     "lo": s.lo if s else None, "hi": s.hi if s else None, "n": s.n if s else 0,
                     "status": r.get("status")})
    sign = -1.0 if higher_is_better else 1.0
    return sorted(rows, key=lambda x: (x["mean"] is None, sign * (x["mean"] if x["mean"] is not None else 0.0)))


def separated(ranked: list[dict]) -> dict[str, bool | None]:
    """Whether the top mixer's interval clears the second's and the bottom's the one above."""
    vals = [r for r in ranked if r["mean"] is not None and r["n"] >= 2]
    if len(vals) < 2:
        return {"top": None, "bottom": None}

    def apart(a: dict, b: dict) -> bool:
        return a["lo"] > b["hi"] or b["lo"] > a["hi"]

    return {"top": apart(vals[0], vals[1]), "bottom": apart(vals[-1], vals[-2])}


def _fmt(v: float | None, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def print_ranking(title: str, ranked: list[dict], reference: list[str]) -> dict:
    """Print one ranked table with intervals; return its summary (tau, separation)."""
    tau = kendall_tau([r["name"] for r in ranked], reference)
    sep = separated(ranked)
    print(f"  {title}: Kendall tau vs literature {_fmt(tau, 2)}; top separated {sep['top']}, "
          f"bottom separated {sep['bottom']}")
    for i, r in enumerate(ranked, 1):
        print(f"    {i}. {r['name']:18s} {_fmt(r['mean'], 4)} ± {_fmt(r['std'], 4)}  "
              f"90% [{_fmt(r['lo'], 4)}, {_fmt(r['hi'], 4)}]  (n={r['n']}; literature rank "
              f"{reference.index(r['name']) + 1 if r['name'] in reference else '-'})")
    return {"tau": tau, "separated": sep, "ranking": ranked}


def _run_summary(run: dict) -> dict:
    """The figures of one evaluation kept in the JSON result."""
    cp = run.get("checkpoint") or {}
    return {k: run.get(k) for k in ("seed", "status", "probe_mean", "val_bpb", "val_loss", "cpu_seconds",
                                    "wall_seconds", "train_seconds", "probes")} | {"checkpoint_loss": cp.get("loss"),
                                                                                  "checkpoint_step": cp.get("step")}


def early_stop_table(results: list[dict], spreads: float = 1.0) -> dict:
    """What the half-way early-stopping rule (training.early_stop) would have said of every
    reference mixer's runs against the seed design's (DeltaNet's) per-seed checkpoint losses, and
    the LM training seconds a stop would have saved (half of that run's LM seconds)."""
    from training.early_stop import decide, reference
    from training.mixers import SEED_MIXER

    seed = next((r for r in results if r["name"] == SEED_MIXER), None)
    runs = [run for run in (seed or {}).get("runs", []) if run.get("status") == "ok"]
    cp = next((run.get("checkpoint") for run in runs if run.get("checkpoint")), None)
    if not runs or not cp:
        return {"reference": None}
    ref = reference({"scale": runs[0].get("scale"), "seeds": runs}, cp["step"], cp["batches"])
    out: dict = {"reference": {"mean": ref.mean, "std": ref.std, "n": ref.n, "step": ref.step} if ref else None,
                 "spreads": spreads, "mixers": {}}
    print(f"  early stopping at step {cp['step']} vs {SEED_MIXER}"
          + (f" {ref.mean:.4f} ± {ref.std:.4f} ({ref.n} seeds)" if ref and ref.std is not None else ": no spread"))
    for r in results:
        rows = []
        for run in r.get("runs", []):
            loss = (run.get("checkpoint") or {}).get("loss")
            d = decide(loss, ref, spreads)
            saved = 0.5 * float(run.get("train_seconds") or 0.0) if d.stop else 0.0
            rows.append({"seed": run.get("seed"), "loss": loss, "outcome": d.outcome, "saved_lm_s": round(saved, 1),
                         "val_bpb": run.get("val_bpb")})
        out["mixers"][r["name"]] = rows
        print(f"    {r['name']:18s} " + ", ".join(
            f"seed {x['seed']}: {_fmt(x['loss'], 4)} {x['outcome']}" for x in rows))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the evaluations and print the rankings; the last line is the JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="probe,explore")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--factor", type=float, default=1.0,
                    help="step multiplier for every probe and the LM (1 = the real scales; 0.1 = smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per evaluation")
    ap.add_argument("--only", default=None, help="comma-separated subset of the reference mixers")
    ap.add_argument("--lm-only", action="store_true",
                    help="at scales that train an LM, skip the probes: explore runs the probe scale's suite at "
                         "the same probe model size and seeds, so its probe results are the probe scale's, "
                         "bit for bit (the recall table is then the probe scale's)")
    ap.add_argument("--out", default=None, help="also write the whole result to this file")
    add_json_flag(ap)
    args = ap.parse_args(argv)
    with json_output("proxy_validity", args.json) as rec:
        rec.settings.update(scales=args.scales, seeds=args.seeds, first_seed=args.first_seed, factor=args.factor,
                            threads=args.threads, only=args.only, lm_only=args.lm_only)
        return run(args, rec.figures)


def run(args: argparse.Namespace, figures: dict) -> int:
    """The evaluations and rankings; the whole result goes to ``figures``."""
    names = args.only.split(",") if args.only else None
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out: dict = {"seeds": seeds, "factor": args.factor, "threads": args.threads, "scales": {}}
    t_all, c_all = time.perf_counter(), time.process_time()
    for scale_name in [s.strip() for s in args.scales.split(",") if s.strip()]:
        scale = get_scale(scale_name) if args.factor == 1.0 else scaled_down(scale_name, args.factor)
        lm_only = bool(getattr(args, "lm_only", False)) and scale.has_lm
        if lm_only:
            scale = replace(scale, probes=())
        print(f"== {scale_name}{'' if args.factor == 1.0 else f' (steps x{args.factor:g})'}: seeds {seeds}, "
              f"threads {args.threads}{' (LM only: recall = the probe scale)' if lm_only else ''}", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()

        def on_result(name: str, seed: int, m: dict) -> None:
            bpb = f" bpb {_fmt(m.get('val_bpb'), 4)}" if m.get("val_bpb") is not None else ""
            bad = "" if m["status"] == "ok" else f" [{m['status']}: {m.get('error') or m.get('stop_reason')}]"
            print(f"  {name:18s} seed {seed}: probe mean {_fmt(m.get('probe_mean'))}{bpb}  "
                  f"{m.get('cpu_seconds') or 0:.0f} s CPU{bad}", flush=True)

        results = evaluate_references(scale, seeds=seeds, names=names, on_result=on_result,
                                      num_threads=args.threads)
        entry = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
                 "runs": {r["name"]: [_run_summary(run) for run in r.get("runs", [])] for r in results}}
        if not lm_only:
            entry["recall"] = print_ranking("recall (mean probe accuracy)", rank(results, "probe_mean", True),
                                            RECALL_ORDER)
        if any(r.get("val_bpb") is not None for r in results):
            entry["lm"] = print_ranking("language modelling (validation bits/byte)", rank(results, "val_bpb", False),
                                        LM_ORDER)
        if any(r.get("val_bpb") is not None for r in results):
            entry["early_stop"] = early_stop_table(results)
        print(f"  time: {entry['wall_s']:.0f} s wall, {entry['cpu_s']:.0f} s CPU", flush=True)
        out["scales"][scale_name] = entry
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    out["cpu_s"] = round(time.process_time() - c_all, 1)
    figures.update(out)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    summary = {"wall_s": out["wall_s"], "cpu_s": out["cpu_s"], "factor": args.factor, "seeds": len(seeds)}
    for k, e in out["scales"].items():
        if "recall" in e:
            summary[f"{k}_recall_tau"] = e["recall"]["tau"]
            summary[f"{k}_recall_separated"] = e["recall"]["separated"]
        if "lm" in e:
            summary[f"{k}_lm_tau"] = e["lm"]["tau"]
            summary[f"{k}_lm_separated"] = e["lm"]["separated"]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
