"""Forward+backward throughput of training.ops against a step-by-step recurrence and fla's naive
chunked references, with this machine's fp32 matmul speed as the roofline.

    .venv/bin/python benchmarks/ops_throughput.py [--lengths 256 1024] [--chunks 16 32 64 128]
        [--repeats 5] [--threads 1] [--clock thread|process|wall] [--shape B H D] [--json]

For each op and length: tokens per second of forward + backward (B=1, H=4, Dk=Dv=64 unless
``--shape`` says otherwise; fp32, CPU) and the fraction of the matmul roofline that represents.
The backward gets a dense random output gradient, as in training (``out.sum().backward()`` would
hand it a stride-0 gradient, which sends torch's batched matmuls to a slow non-BLAS path).

Timing. By default the clock is this thread's CPU time (``time.thread_time``) with
``torch.set_num_threads(1)``: tokens per CPU-second of one thread, which stays meaningful when
other jobs share the machine (wall time does not). Every figure is the median of ``--repeats``
runs after one warm-up, the implementations of an op run in interleaved rounds (so a change in the
machine's load hits all of them alike); the roofline is the median of samples taken before,
between and after the ops. ``--clock wall`` gives wall-clock figures (use it with --threads on an idle
machine). CPU time on a loaded VM still moves by tens of percent (shared caches, steal time): compare
implementations within one run, not across runs.

Roofline. fp32 GFLOP/s of a 1024 x 1024 x 1024 matmul on one thread, measured here.

FLOP count (the "% of roofline"). Only matrix products are counted, 2 FLOPs per multiply-add, for
every head and token (B * H * L), forward x 3 for forward + backward (the backward of a product
is two products of the same size). Per head and token, with chunk size C (the implementation's
own: ours uses its tuned size, fla's naive references 64) and Dk = Dv = D:

- linear attention, retention, GLA: q k^T 2CD, A v 2CD, q S 2D^2, k^T v 2D^2.
  (GLA's secondary chunking does the same products; its elementwise decays are not counted.)
- delta rule, gated delta rule: the above plus k k^T 2CD, the triangular inverse C^2/3, u and w
  (T [beta v, beta k]) 4CD, w S 2D^2.
- recurrent reference: the outer-product update and the read-out, 4D^2 (6D^2 for the delta rule).

Masked (causal) halves are counted as computed, as fla's chunk kernels compute them. The count is
a property of the algorithm, so a larger chunk does more FLOPs: tokens/s is the figure to compare
speed by, the percentage says how well the CPU's matmul units are used.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_flag, json_output  # noqa: E402
from training import ops  # noqa: E402

B, H, DK, DV = 1, 4, 64, 64
FLA_CHUNK = 64
SLOW_BUDGET_S = 3.0  # skip a reference implementation where one run would take longer
GOAL_ROOF, GOAL_FLA = 0.25, 3.0  # the goals: >= 25% of the roofline, >= 3x fla's naive chunked code


# ------------------------------------------------------------------------------------------------
# timing and roofline
# ------------------------------------------------------------------------------------------------


CLOCKS: dict[str, Callable[[], float]] = {
    "thread": time.thread_time,
    "process": time.process_time,
    "wall": time.perf_counter,
}
CLOCK: Callable[[], float] = time.thread_time


def median_time(fn: Callable[[], None], repeats: int = 5, slow: float = 1.0) -> float:
    """Median time of ``fn`` over ``repeats`` runs after one warm-up (on ``CLOCK``).

    A warm-up slower than ``slow`` seconds is the figure (one run of a slow reference is enough).
    """
    return interleaved_medians({"fn": fn}, repeats, slow)["fn"]


def interleaved_medians(runs: dict, repeats: int = 5, slow: float = 1.0) -> dict:
    """Median time of each callable in ``runs``, measured in rounds (one run of each per round).

    Interleaving spreads the machine's load changes over all implementations alike instead of
    favouring whichever ran in a quiet moment. Each callable is warmed up once; one whose warm-up
    takes longer than ``slow`` seconds keeps that single figure and sits out the rounds.
    """
    samples: dict = {}
    for name, fn in runs.items():
        t0 = CLOCK()
        fn()
        first = CLOCK() - t0
        samples[name] = [first] if first > slow else []
    active = [n for n in runs if not samples[n]]
    for _ in range(repeats):
        for name in active:
            t0 = CLOCK()
            runs[name]()
            samples[name].append(CLOCK() - t0)
    return {n: statistics.median(ts) for n, ts in samples.items()}


def matmul_gflops(n: int = 1024, repeats: int = 7) -> float:
    """fp32 GFLOP/s of an n x n x n matmul on this machine (one roofline sample)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_time(lambda: a @ b, repeats=repeats) / 1e9


def flops_per_token(op: str, impl: str, C: int) -> float:
    """Matmul FLOPs per token (all H heads) of forward + backward; see the module docstring."""
    D = DK  # == DV here
    if impl == "recurrent":
        fwd = (6 if op in DELTA_OPS else 4) * D * D
    else:
        fwd = 4 * C * D + 4 * D * D
        if op in DELTA_OPS:
            fwd += 2 * C * D + C * C / 3 + 4 * C * D + 2 * D * D
    return 3 * fwd * H


DELTA_OPS = ("delta_rule", "gated_delta_rule")


# ------------------------------------------------------------------------------------------------
# implementations
# ------------------------------------------------------------------------------------------------


def load_fla_naive(sub: str):
    """fla/ops/<sub>/naive.py loaded by path (no triton), or None."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "ops" / sub / "naive.py"
    if not path.exists():
        return None
    s = importlib.util.spec_from_file_location(f"_fla_naive_{sub}", path)
    m = importlib.util.module_from_spec(s)
    try:
        s.loader.exec_module(m)
    except ImportError:
        return None
    return m


def bthd(x):
    return x.transpose(1, 2)


def build(op: str, L: int, chunk: int | None = None):
    """Inputs (leaf tensors) and {implementation: (callable returning [B, H, L, Dv], chunk size)}.

    ``chunk`` is our ops' chunk size (None: the op's tuned default for this length).
    """
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, DK, generator=g)
    k = ops.l2_norm(torch.randn(B, H, L, DK, generator=g))
    v = torch.randn(B, H, L, DV, generator=g)
    beta = torch.rand(B, H, L, generator=g)
    g_head = -torch.rand(B, H, L, generator=g) * 0.1
    g_chan = F.logsigmoid(torch.randn(B, H, L, DK, generator=g)) / 16
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))
    leaves = [q, k, v, beta, g_head, g_chan]
    for t in leaves:
        t.requires_grad_(True)
    C = ops.chunk_size_for(op, L, DK) if chunk is None else chunk
    impls: dict[str, tuple[Callable[[], torch.Tensor], int]] = {}
    if op == "linear_attention":
        impls["ours"] = (lambda: ops.linear_attention(q, k, v, chunk_size=C)), C
        impls["recurrent"] = (lambda: ops.recurrence(q, k, v)), 1
        m = load_fla_naive("linear_attn")
        if m is not None and L % FLA_CHUNK == 0:
            impls["fla naive chunk"] = (lambda: bthd(m.naive_chunk_linear_attn(bthd(q), bthd(k), bthd(v)))), FLA_CHUNK
    elif op == "retention":
        impls["ours"] = (lambda: ops.retention(q, k, v, gamma, chunk_size=C)), C
        impls["recurrent"] = (lambda: ops.recurrence(q, k, v, decay=lambda t: gamma.view(1, H, 1, 1))), 1
        m = load_fla_naive("simple_gla")
        if m is not None:
            lg = gamma.log().view(1, 1, H).expand(B, L, H)
            impls["fla naive chunk"] = (
                lambda: bthd(m.naive_chunk_simple_gla(bthd(q), bthd(k), bthd(v), lg, chunk_size=FLA_CHUNK)[0])
            ), FLA_CHUNK
    elif op == "gated_linear_attention":
        impls["ours"] = (lambda: ops.gated_linear_attention(q, k, v, g_chan, chunk_size=C)), C
        impls["recurrent"] = (lambda: ops.recurrence(q, k, v, decay=lambda t: g_chan[:, :, t].exp()[..., None])), 1
        # fla ships only a recurrent naive GLA (no chunked one)
    elif op == "delta_rule":
        impls["ours"] = (lambda: ops.delta_rule(q, k, v, beta, chunk_size=C)), C
        impls["recurrent"] = (lambda: ops.recurrence(q, k, v, beta=beta)), 1
        m = load_fla_naive("delta_rule")
        if m is not None and L % FLA_CHUNK == 0:
            impls["fla naive chunk"] = (lambda: m.delta_rule_chunkwise(q, k, v, beta, chunk_size=FLA_CHUNK)[0]), FLA_CHUNK
    elif op == "gated_delta_rule":
        impls["ours"] = (lambda: ops.gated_delta_rule(q, k, v, beta, g_head, chunk_size=C)), C
        impls["recurrent"] = (
            lambda: ops.recurrence(q, k, v, beta=beta, decay=lambda t: g_head[:, :, t].exp()[..., None, None])
        ), 1
        m = load_fla_naive("gated_delta_rule")
        if m is not None:
            impls["fla naive chunk"] = (
                lambda: bthd(
                    m.naive_chunk_gated_delta_rule(
                        bthd(q), bthd(k), bthd(v), bthd(g_head), bthd(beta), chunk_size=FLA_CHUNK
                    )[0]
                )
            ), FLA_CHUNK
    return leaves, impls


def fwd_bwd(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], None]:
    """One forward + backward of ``fn`` with a dense random output gradient.

    (Not ``fn().sum().backward()``: its gradient is a stride-0 expanded tensor, which sends
    torch's batched matmuls in the backward to a slow non-BLAS path that training never sees.)
    """
    grad: list[torch.Tensor] = []

    def run() -> None:
        for t in leaves:
            t.grad = None
        out = fn()
        if not grad:
            grad.append(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        out.backward(grad[0])

    return run


OPS = ["linear_attention", "retention", "gated_linear_attention", "delta_rule", "gated_delta_rule"]
IMPLS = ["ours", "recurrent", "fla naive chunk"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--ops", nargs="+", default=OPS, choices=OPS)
    parser.add_argument("--chunks", type=int, nargs="+", default=None,
                        help="also time ours at these chunk sizes (the tuning sweep)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (the median is reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=list(CLOCKS), default="thread")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("B", "H", "D"), default=[B, H, DK],
                        help="batch, heads and head dim (Dk = Dv); the goal is stated for 1 4 64")
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.threads > 1 and args.clock == "thread":
        parser.error("--clock thread measures one thread only: use --clock process or wall with --threads > 1")
    with json_output("ops_throughput", args.json) as rec:
        run(args, rec)


def run(args: argparse.Namespace, rec) -> None:
    """The benchmark proper; figures go to ``rec`` (see benchmarks/_common.py)."""
    torch.set_num_threads(args.threads)
    global CLOCK, B, H, DK, DV
    CLOCK = CLOCKS[args.clock]
    B, H, DK = args.shape
    DV = DK
    rec.settings.update(
        B=B, H=H, Dk=DK, Dv=DV, dtype="float32", lengths=args.lengths, threads=args.threads,
        clock=args.clock, repeats=args.repeats, statistic="median", fla_chunk=FLA_CHUNK,
    )
    roof_samples = [matmul_gflops()]
    unit = {"thread": "per CPU-second of one thread", "process": "per CPU-second (process)",
            "wall": "per wall-clock second"}[args.clock]
    print(f"torch {torch.__version__}, {args.threads} thread(s), fp32, B={B} H={H} Dk=Dv={DK}; "
          f"median of {args.repeats} runs, clock {args.clock}")
    print(f"roofline sample: fp32 1024^3 matmul = {roof_samples[0]:.1f} GFLOP/s {unit}")
    print(f"figures: forward+backward tokens {unit} (% of the roofline; FLOPs counted as in the docstring)\n")
    header = f"{'op':<24}{'L':>6}{'C':>5}" + "".join(f"{name:>26}" for name in IMPLS) + f"{'vs recurrent':>14}{'vs fla':>9}"
    print(header)
    print("-" * len(header))
    notes: list[str] = []
    run_time: dict[tuple[str, str, int], float] = {}
    rows: list[dict] = []
    for op in args.ops:
        for L in args.lengths:
            leaves, impls = build(op, L)
            runs: dict[object, Callable[[], None]] = {}
            for name in IMPLS:
                if name not in impls:
                    continue
                prev = [(l0, t0) for (o, n0, l0), t0 in run_time.items() if (o, n0) == (op, name)]
                if prev and name != "ours":
                    l0, t0 = max(prev)
                    projected = t0 * L / l0  # all of them are at least linear in L
                    if projected > SLOW_BUDGET_S:
                        notes.append(f"{op} L={L}: {name} skipped (projected {projected:.1f} s per run "
                                     f"> {SLOW_BUDGET_S:.0f} s budget)")
                        continue
                runs[name] = fwd_bwd(impls[name][0], leaves)
            for c in args.chunks or []:
                lv, im = build(op, L, chunk=c)
                runs[c] = fwd_bwd(im["ours"][0], lv)
            measured = interleaved_medians(runs, args.repeats)
            times = {n: t for n, t in measured.items() if isinstance(n, str)}
            sweep = {c: B * L / t for c, t in measured.items() if isinstance(c, int)}
            for name, t in times.items():
                run_time[(op, name, L)] = t
            rows.append({"op": op, "L": L, "chunk": impls["ours"][1], "times": times, "sweep": sweep,
                         "chunks": {n: c for n, (_, c) in impls.items()}})
        roof_samples.append(matmul_gflops())
    roof = statistics.median(roof_samples)
    figures: dict = {"roofline_gflops": round(roof, 2), "roofline_samples": [round(r, 2) for r in roof_samples],
                     "ops": {}}
    for row in rows:
        op, L, times = row["op"], row["L"], row["times"]
        cells, cell_fig = [], {}
        for name in IMPLS:
            if name not in times:
                cells.append("skipped" if name in row["chunks"] else "n/a")
                continue
            tok_s = B * L / times[name]
            frac = tok_s * flops_per_token(op, name, row["chunks"][name]) / (roof * 1e9)
            cells.append(f"{tok_s:>11,.0f} ({100 * frac:5.1f}%)")
            cell_fig[name] = {"tokens_per_s": round(tok_s, 1), "roofline_fraction": round(frac, 4)}
        vs_rec = times["recurrent"] / times["ours"] if "recurrent" in times else None
        vs_fla = times["fla naive chunk"] / times["ours"] if "fla naive chunk" in times else None
        print(f"{op:<24}{L:>6}{row['chunk']:>5}" + "".join(f"{c:>26}" for c in cells)
              + f"{(f'{vs_rec:.1f}x' if vs_rec else '-'):>14}{(f'{vs_fla:.2f}x' if vs_fla else '-'):>9}")
        entry = {"chunk": row["chunk"], **cell_fig, "speedup_vs_recurrent": vs_rec and round(vs_rec, 2),
                 "speedup_vs_fla_naive": vs_fla and round(vs_fla, 2)}
        if row["sweep"]:
            entry["sweep_tokens_per_s"] = {str(c): round(t, 1) for c, t in row["sweep"].items()}
        figures["ops"].setdefault(op, {})[str(L)] = entry
    if any(r["sweep"] for r in rows):
        print("\nchunk sweep (ours, tokens/s; * = fastest):")
        for row in rows:
            if row["sweep"]:
                best = max(row["sweep"], key=row["sweep"].get)
                print(f"  {row['op']:<24}{row['L']:>6}  " + "  ".join(
                    f"C={c}: {t:,.0f}{'*' if c == best else ''}" for c, t in row["sweep"].items()))
    print(f"\nroofline: median of {len(roof_samples)} samples = {roof:.1f} GFLOP/s "
          f"(samples {', '.join(f'{r:.1f}' for r in roof_samples)})")
    goal_L = 1024
    if any(r["L"] == goal_L for r in rows) and (B, H, DK) == (1, 4, 64):
        print(f"goal at L={goal_L}: >= {GOAL_ROOF:.0%} of the roofline and >= {GOAL_FLA:.0f}x fla's naive chunked code:")
        for row in rows:
            if row["L"] != goal_L:
                continue
            e = figures["ops"][row["op"]][str(goal_L)]
            frac = e.get("ours", {}).get("roofline_fraction")
            fla = e.get("speedup_vs_fla_naive")
            verdict = [f"roofline {'met' if frac is not None and frac >= GOAL_ROOF else 'NOT met'}"]
            if fla is not None:
                verdict.append(f"fla {'met' if fla >= GOAL_FLA else 'NOT met'} ({fla:.2f}x)")
            print(f"  {row['op']:<24} " + ", ".join(verdict))
    if notes:
        print("\nnotes:")
        for n in notes:
            print("  " + n)
    print("  fla ships no chunked naive GLA (only a recurrent one): n/a. 'fla naive chunk' for retention is")
    print("  naive_chunk_simple_gla with g = log(gamma); fla's naive delta rule inverts with a Python loop;")
    print("  fla's naive chunked linear attention and delta rule need L to be a multiple of 64.")
    rec.figures.update(figures)


if __name__ == "__main__":
    main()
