"""Rank the six reference mixers at the probe and/or explore scale, with seeds and wall time.

    .venv/bin/python benchmarks/baseline_ranking.py [--scale probe|explore|both] [--seeds N]
        [--only a,b] [--out FILE] [--json]

Prints one line per run as it finishes, then a ranked table per scale (mean over seeds, with the
spread), the per-probe accuracies, and how the measured order on the recall probes compares with
the literature's order (Zoology; Gated DeltaNet): softmax > Gated DeltaNet >= DeltaNet > GLA >
RetNet >= linear attention. Figures depend on the machine and its load: run it on a quiet machine
for timings (every run does its fixed steps; CPU seconds are reported beside wall seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_json_flag, json_output  # noqa: E402

from training.evaluate import evaluate_references  # noqa: E402
from training.scales import get_scale  # noqa: E402

LITERATURE = ["softmax_attention", "gated_deltanet", "deltanet", "gla", "retnet", "linear_attention"]
RECALL_PROBES = ("mqar", "noisy_recall", "fuzzy_recall")


def kendall_tau(order_a: list[str], order_b: list[str]) -> float:
    """Kendall rank correlation of two orderings of the same names (1 = same order)."""
    names = [n for n in order_a if n in order_b]
    pos = {n: i for i, n in enumerate(order_b)}
    concordant = discordant = 0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if pos[names[i]] < pos[names[j]]:
                concordant += 1
            else:
                discordant += 1
    total = concordant + discordant
    return (concordant - discordant) / total if total else 1.0


def fmt(v, d=3):
    """Format a number or '-'."""
    return "-" if v is None else f"{v:.{d}f}"


def main() -> None:
    """Run the ranking and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="probe", choices=["probe", "explore", "both"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first_seed .. first_seed + seeds - 1")
    ap.add_argument("--only", default=None, help="comma-separated subset of the reference mixers")
    ap.add_argument("--out", default=None, help="write all results (every run) to this JSON file")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a loaded machine)")
    add_json_flag(ap)
    args = ap.parse_args()
    with json_output("baseline_ranking", args.json) as rec:
        rec.settings.update(scale=args.scale, seeds=args.seeds, first_seed=args.first_seed,
                            only=args.only, threads=args.threads)
        run(args, rec.figures)


def run(args: argparse.Namespace, figures: dict) -> None:
    """Rank the references per scale; per scale the ranked table and the rank correlations go to ``figures``."""
    scales = ["probe", "explore"] if args.scale == "both" else [args.scale]
    names = args.only.split(",") if args.only else None
    everything = {}
    for scale_name in scales:
        scale = get_scale(scale_name)
        print(f"== scale {scale_name}: d_model {scale.d_model}, probes at d={scale.probe_d_model}, "
              f"LM {scale.lm_tokens:,} tokens, seeds {args.seeds}, "
              f"threads {args.threads or 'default'}", flush=True)
        t0 = time.time()

        def on_result(name, seed, m):
            probes = " ".join(f"{k}={fmt(v, 2)}" for k, v in (m.get("probes") or {}).items())
            bpb = f" bpb={fmt(m.get('val_bpb'), 4)} tok/s={m.get('tokens_per_s') or 0:,.0f}" if m.get("val_bpb") else ""
            extra = "" if m["status"] == "ok" else f" [{m['status']}: {m.get('error') or m.get('stop_reason')}]"
            print(f"  {name:18s} seed {seed}: {m['wall_seconds']:6.1f} s wall {m.get('cpu_seconds') or 0:6.1f} s cpu  "
                  f"mean={fmt(m.get('probe_mean'))}{bpb}  "
                  f"{probes}{extra}", flush=True)

        seeds = range(args.first_seed, args.first_seed + args.seeds)
        ranked = evaluate_references(scale, seeds=seeds, names=names, on_result=on_result, num_threads=args.threads)
        everything[scale_name] = ranked
        print(f"\n-- ranked at {scale_name} (total {time.time() - t0:.0f} s; mean ± std over seeds)")
        probe_names = list(ranked[0]["probes"]) if ranked else []
        head = f"{'#':>2} {'mixer':18s} {'val bpb':>15s} {'probe mean':>15s} " + " ".join(
            f"{p[:10]:>10s}" for p in probe_names) + f" {'wall s':>7s} {'cpu s':>7s}"
        print(head)
        for i, r in enumerate(ranked, 1):
            bpb = f"{fmt(r['val_bpb'], 4)} ±{fmt(r['val_bpb_std'], 3)}" if r["val_bpb"] is not None else "-"
            pm = f"{fmt(r['probe_mean'])} ±{fmt(r['probe_mean_std'])}"
            print(f"{i:>2} {r['name']:18s} {bpb:>15s} {pm:>15s} " + " ".join(
                f"{fmt(r['probes'].get(p)):>10s}" for p in probe_names) + f" {fmt(r['wall_seconds'], 1):>7s}"
                  + f" {fmt(r.get('cpu_seconds'), 1):>7s}"
                  + ("" if r["status"] == "ok" else f"  {r['status']}: {r['problem']}"))
        recall = {r["name"]: sum((r["probes"].get(p) or 0.0) for p in RECALL_PROBES) for r in ranked}
        by_recall = sorted(recall, key=lambda n: -recall[n])
        print(f"\nrecall order (sum of {', '.join(RECALL_PROBES)}): {' > '.join(by_recall)}")
        print(f"literature order on recall:  {' > '.join(n for n in LITERATURE if n in recall)}")
        print(f"Kendall tau (measured recall vs literature): {kendall_tau(by_recall, LITERATURE):+.2f}")
        figures[scale_name] = {
            "ranked": [{k: r.get(k) for k in ("name", "val_bpb", "val_bpb_std", "probe_mean", "probe_mean_std",
                                              "probes", "wall_seconds", "cpu_seconds", "status")} for r in ranked],
            "recall_order": by_recall, "kendall_tau_recall": kendall_tau(by_recall, LITERATURE),
            "total_s": round(time.time() - t0, 1),
        }
        if ranked and ranked[0]["val_bpb"] is not None:
            by_bpb = [r["name"] for r in ranked if r["val_bpb"] is not None]
            print(f"LM order (val bpb): {' < '.join(by_bpb)};  Kendall tau vs literature: "
                  f"{kendall_tau(by_bpb, LITERATURE):+.2f}")
            figures[scale_name]["lm_order"] = by_bpb
            figures[scale_name]["kendall_tau_lm"] = kendall_tau(by_bpb, LITERATURE)
        print(flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
