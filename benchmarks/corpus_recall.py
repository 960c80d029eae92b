"""Measure the cognition base's retrieval quality: recall@k of the symptom queries in
``corpus/eval_queries.toml`` for each passage scheme, with the real embedding model (or
``--embedder hash`` for the lexical baseline). Prints one line per scheme and the misses.

    .venv/bin/python benchmarks/corpus_recall.py [--embedder SPEC] [-k 5] [--misses]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_json_flag, json_output  # noqa: E402
from archive.embed import get_embedder  # noqa: E402
from corpus.retrieval import SCHEMES, CognitionBase, load_eval_queries, recall_at_k  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--embedder", default=None, help="embedder spec (default: local all-MiniLM-L6-v2)")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--misses", action="store_true", help="print the queries that missed")
    add_json_flag(ap)
    args = ap.parse_args()
    with json_output("corpus_recall", args.json) as rec:
        rec.settings.update(embedder=args.embedder or "default", k=args.k)
        run(args, rec.figures)


def run(args: argparse.Namespace, figures: dict) -> None:
    """Recall@k per passage scheme; figures per scheme go to ``figures``."""
    emb = get_embedder(args.embedder)
    queries = load_eval_queries()
    for scheme in args.schemes.split(","):
        t0 = time.perf_counter()
        base = CognitionBase.load(emb, scheme=scheme)
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        rec, misses = recall_at_k(base, queries, args.k)
        rec_s, _ = recall_at_k(base, load_eval_queries(style="symptom"), args.k)
        rec_p, _ = recall_at_k(base, load_eval_queries(style="paraphrase"), args.k)
        q_ms = (time.perf_counter() - t1) / len(queries) * 1000
        print(f"{emb.name} scheme={scheme:9s} entries={len(base)} passages={len(base.index)} "
              f"queries={len(queries)} recall@{args.k}={rec:.3f} (symptom {rec_s:.3f}, paraphrase {rec_p:.3f}) complete={len(queries) - len(misses)}/{len(queries)} "
              f"load={load_s:.1f}s{' (cache)' if base.from_cache else ''} query={q_ms:.1f}ms")
        figures[scheme] = {
            "recall": round(rec, 4), "recall_symptom": round(rec_s, 4), "recall_paraphrase": round(rec_p, 4),
            "queries": len(queries), "complete": len(queries) - len(misses), "load_s": round(load_s, 3),
            "query_ms": round(q_ms, 3), "embedder": emb.name,
        }
        if args.misses:
            for text, missing, got in misses:
                print(f"   MISS {missing} for {text[:80]!r}\n        got {got}")


if __name__ == "__main__":
    main()
