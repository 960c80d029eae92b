"""Archive at scale: synthesise N experiments (default 10,000) and print

* commit time per experiment (ArchiveStore.commit: objects, tag, main, best; median, p99), and
  the whole Lab.commit (archive + index + novelty, real embedding model) at the end;
* reindex time (index.json rebuilt from git) and the open time of a lab;
* lineage tree build + render time (rich, to a file);
* novelty query latency p50/p99 and recall@10 against brute force at 10k and 100k vectors
  (384-d, clustered like real embeddings), and the index build time;
* embedding model load time and throughput;
* disk size of the lab.

Usage: python benchmarks/archive_scale.py [--n 10000] [--vectors 10000,100000] [--quick] [--json]
Targets (issue): commit <= 50 ms median at 10k; novelty query <= 1 ms p99 at 100k.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from archive.embed import HashEmbedder, get_embedder  # noqa: E402
from archive.lab import Lab  # noqa: E402
from archive.lineage import lineage_tree  # noqa: E402
from archive.record import format_id  # noqa: E402
from archive.synth import BASE_CODE, synthetic_record  # noqa: E402
from archive.vectors import VectorIndex  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_flag, json_output  # noqa: E402

FIGURES: dict = {}  # what --json reports, filled in by the bench_* functions


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def du_blocks(path: Path) -> str:
    return subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True).stdout.split()[0]


def seed_code() -> str:
    try:
        from archive.lab import seed_source

        return seed_source()
    except Exception:
        return BASE_CODE


def bench_archive(n: int, workdir: Path) -> Path:
    print(f"== archive: {n} synthetic experiments ==")
    code = seed_code()
    t = time.perf_counter()
    lab = Lab.init(workdir / "lab", seed_code=code, embedder=HashEmbedder())
    print(f"init: {time.perf_counter() - t:.2f} s")
    store = lab.store
    rng = random.Random(0)
    top10: list[tuple[float, str]] = []
    recs = {"0000": store.get("0000")}
    times: list[float] = []
    cpu: list[float] = []
    t_all = time.perf_counter()
    for i in range(1, n + 1):
        parent_id = rng.choice(top10)[1] if top10 else "0000"
        refs = rng.sample([f"{j:04d}" for j in range(max(0, i - 50), i)], min(3, i))
        rec = synthetic_record(rng, format_id(i), recs[parent_id], refs)
        rec.code = recs[parent_id].code if i % 3 else rec.code  # code grows slowly, like mutations
        rec.metrics["loss_curve"] = [[s, 2.0 - s / 1000] for s in range(0, 1000, 20)] if rec.metrics else {}
        rec.transcript = [{"role": "researcher", "model": "builtin", "prompt": "p" * 2000, "reply": "r" * 1500,
                           "duration_s": 0.1, "tokens_in": 500, "tokens_out": 400}]
        t, c = time.perf_counter(), time.process_time()
        store.commit(rec)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if rec.status == "accepted":
            recs[rec.id] = rec
            top10 = sorted(top10 + [(rec.fitness, rec.id)], reverse=True)[:10]
        if i % 2000 == 0:
            print(f"  {i}: median {pct(times[-2000:], 50) * 1e3:.1f} ms, p99 {pct(times[-2000:], 99) * 1e3:.1f} ms")
    total = time.perf_counter() - t_all
    print(f"commit (ArchiveStore.commit) over {n}: median {pct(times, 50) * 1e3:.1f} ms, "
          f"p99 {pct(times, 99) * 1e3:.1f} ms, max {max(times) * 1e3:.0f} ms (includes packing every "
          f"{store.maintenance_every}), last 1000 median {pct(times[-1000:], 50) * 1e3:.1f} ms; total {total:.0f} s")
    print(f"commit CPU time of this process (robust to other load): median {pct(cpu, 50) * 1e3:.2f} ms, "
          f"p99 {pct(cpu, 99) * 1e3:.2f} ms")
    FIGURES["commit"] = {"n": n, "median_ms": round(pct(times, 50) * 1e3, 3), "p99_ms": round(pct(times, 99) * 1e3, 3),
                         "cpu_median_ms": round(pct(cpu, 50) * 1e3, 3), "total_s": round(total, 1)}
    lab.close()

    t = time.perf_counter()
    lab = Lab.open(workdir / "lab", embedder=HashEmbedder())
    print(f"open (index caught up from git: {n} experiments): {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    out = lab.reindex(novelty=False)
    print(f"reindex (index.json from git, {out['experiments']} experiments): {out['index_seconds']:.2f} s")
    FIGURES["reindex_s"] = round(out["index_seconds"], 3)
    t = time.perf_counter()
    lab.novelty.rebuild(lab.store)
    print(f"novelty rebuild with the hash embedder ({len(lab.novelty)} motivations): {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    reopened = Lab.open(workdir / "lab", embedder=HashEmbedder())
    print(f"open (derived stores in step): {time.perf_counter() - t:.2f} s")
    reopened.close()

    t = time.perf_counter()
    docs, children = lab.index.all(), lab.store.children_map()
    tree = lineage_tree(docs, children, best_id=lab.store.best().id)
    t_build = time.perf_counter() - t
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None).print(tree)
    t_render = time.perf_counter() - t
    print(f"lineage tree: build {t_build * 1e3:.0f} ms, build+render {t_render:.2f} s "
          f"({buf.getvalue().count(chr(10))} lines)")

    t = time.perf_counter()
    subprocess.run(["git", f"--git-dir={workdir / 'lab' / 'archive'}", "log", "--graph", "--oneline", "--all"],
                   capture_output=True, check=True)
    print(f"git log --graph --oneline --all: {time.perf_counter() - t:.2f} s")

    # the full step 9 (archive + index.json + novelty) at this size; the novelty index here uses
    # the hash embedder (re-embedding N motivations with the real model takes N / throughput);
    # the real model adds one embedding per commit (see the embedder figures above).
    full, full_cpu = [], []
    rng2 = random.Random(1)
    for _ in range(50):
        p = lab.candidates.sample_parent(rng2)
        rec = synthetic_record(rng2, "", p, [r.id for r in lab.candidates.sample_references(rng2, exclude={p.id})])
        t, c = time.perf_counter(), time.process_time()
        lab.commit(rec)
        full.append(time.perf_counter() - t)
        full_cpu.append(time.process_time() - c)
    print(f"Lab.commit (archive + index.json + novelty, hash embedder) at {len(lab.store)}: "
          f"median {pct(full, 50) * 1e3:.0f} ms, p99 {pct(full, 99) * 1e3:.0f} ms (CPU median "
          f"{pct(full_cpu, 50) * 1e3:.0f} ms)")
    FIGURES["lab_commit"] = {"median_ms": round(pct(full, 50) * 1e3, 2), "p99_ms": round(pct(full, 99) * 1e3, 2),
                             "cpu_median_ms": round(pct(full_cpu, 50) * 1e3, 2)}
    lab.index.flush_interval = 5.0
    full = []
    for _ in range(50):
        p = lab.candidates.sample_parent(rng2)
        rec = synthetic_record(rng2, "", p, [r.id for r in lab.candidates.sample_references(rng2, exclude={p.id})])
        t = time.perf_counter()
        lab.commit(rec)
        full.append(time.perf_counter() - t)
    print(f"  same with index.json written at most every 5 s: median {pct(full, 50) * 1e3:.0f} ms, "
          f"p99 {pct(full, 99) * 1e3:.0f} ms")
    lab.close()
    labdir = workdir / "lab"
    print(f"disk: lab {du(labdir) / 1e6:.1f} MB in files ({du_blocks(labdir)} on disk); "
          f"archive {du(labdir / 'archive') / 1e6:.1f} MB, index.json {(labdir / 'index.json').stat().st_size / 1e6:.1f} MB, "
          f"novelty {(labdir / 'novelty.hnsw').stat().st_size / 1e6:.1f} MB")
    FIGURES["lab_mb"] = round(du(labdir) / 1e6, 2)
    return labdir


def clustered(n: int, rng: np.random.Generator, centers: np.ndarray, noise: float) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + noise * rng.normal(size=(n, centers.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_vectors(sizes: list[int], dim: int = 384, queries: int = 1000) -> None:
    """Vectors drawn around 500 centres: noise 0.15 gives same-centre cosines ~0.5 (like
    embeddings of related motivations); noise 0.35 is nearly isotropic (a hard case)."""
    print(f"== novelty index (hnswlib cosine, M=16, ef_construction=200), dim {dim}, {queries} queries ==")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(500, dim)).astype(np.float32) / np.sqrt(dim) * 3
    cases = [(n, 0.15, (64,)) for n in sizes] + [(min(sizes), 0.35, (64, 128))]
    for n, noise, efs in cases:
        x = clustered(n, rng, centers, noise)
        idx = VectorIndex(dim, None, capacity=n)
        t = time.perf_counter()
        for j in range(0, n, 10000):
            idx.add([str(k) for k in range(j, min(n, j + 10000))], x[j:j + 10000])
        build = time.perf_counter() - t
        q = clustered(queries, rng, centers, noise)
        exact = np.concatenate([np.argsort(-(q[a:a + 100] @ x.T), axis=1)[:, :10] for a in range(0, queries, 100)])
        t = time.perf_counter()
        _ = q[:100] @ x.T
        brute = (time.perf_counter() - t) / 100
        for ef in efs:
            idx.ef = ef
            lat, cpu, got = [], [], []
            for v in q:
                t, c = time.perf_counter(), time.process_time()
                res = idx.query(v, 10)
                lat.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                got.append([int(k) for k, _ in res])
            recall = np.mean([len(set(g) & set(e.tolist())) / 10 for g, e in zip(got, exact)])
            r1 = np.mean([g[0] == e[0] for g, e in zip(got, exact)])
            print(f"{n:>7} vectors, noise {noise}, ef {ef}: build {build:.1f} s; query k=10 wall p50 "
                  f"{pct(lat, 50) * 1e3:.3f} ms, p99 {pct(lat, 99) * 1e3:.3f} ms (CPU p50 {pct(cpu, 50) * 1e3:.3f}, "
                  f"p99 {pct(cpu, 99) * 1e3:.3f} ms); recall@10 {recall:.3f}, recall@1 {r1:.3f}; "
                  f"brute force {brute * 1e3:.2f} ms/query")
            FIGURES.setdefault("novelty", []).append({
                "vectors": n, "noise": noise, "ef": ef, "build_s": round(build, 2),
                "query_p50_ms": round(pct(lat, 50) * 1e3, 4), "query_p99_ms": round(pct(lat, 99) * 1e3, 4),
                "recall_at_10": round(float(recall), 4)})


def bench_embedder() -> None:
    print("== embedding model (all-MiniLM-L6-v2 int8 ONNX via fastembed) ==")
    code = ("import time, sys; t=time.perf_counter(); from archive.embed import get_embedder; e=get_embedder(); "
            "print(f'{time.perf_counter()-t:.2f}')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    print(f"cold load in a fresh process (import + model): {out.stdout.strip() or out.stderr.strip()[-200:]} s")
    emb = get_embedder()
    t = time.perf_counter()
    get_embedder()
    print(f"get_embedder() again (cached): {(time.perf_counter() - t) * 1e6:.1f} µs")
    texts = [f"Combine a gated decay with a delta-rule update so that memory variant {i} forgets selectively "
             f"while keeping recall sharp at long range." for i in range(256)]
    t = time.perf_counter()
    emb.embed(texts)
    dt = time.perf_counter() - t
    one = []
    for tx in texts[:30]:
        t = time.perf_counter()
        emb.embed([tx])
        one.append(time.perf_counter() - t)
    print(f"throughput: {len(texts) / dt:.0f} motivations/s in batches; one motivation {pct(one, 50) * 1e3:.1f} ms median")
    FIGURES["embedder"] = {"cold_load_s": out.stdout.strip() or None, "per_s_batched": round(len(texts) / dt, 1),
                           "one_median_ms": round(pct(one, 50) * 1e3, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="synthetic experiments")
    ap.add_argument("--vectors", default="10000,100000", help="novelty index sizes")
    ap.add_argument("--quick", action="store_true", help="1,000 experiments and 10k vectors")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic lab (path printed)")
    add_json_flag(ap)
    args = ap.parse_args()
    if args.quick:
        args.n, args.vectors = 1000, "10000"
    with json_output("archive_scale", args.json) as rec:
        rec.settings.update(n=args.n, vectors=args.vectors)
        rec.figures = FIGURES
        run(args)


def run(args: argparse.Namespace) -> None:
    """The embedder, novelty-index and archive benchmarks (figures in ``FIGURES``)."""
    work = Path(tempfile.mkdtemp(prefix="asiarch-bench-"))
    try:
        bench_embedder()
        bench_vectors([int(s) for s in args.vectors.split(",") if s])
        bench_archive(args.n, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
