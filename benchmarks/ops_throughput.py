"""Forward+backward throughput of training.ops against a step-by-step recurrence and fla's naive
chunked references, with this machine's fp32 matmul speed as the roofline.

    .venv/bin/python benchmarks/ops_throughput.py [--lengths 256 1024 4096] [--threads N] [--clock cpu|wall]

For each op and length: tokens/s of forward + backward (B=1, H=4, Dk=Dv=64, fp32, CPU), and the
estimated fraction of the matmul roofline. The FLOP count is the same model for every
implementation of an op (the chunked algorithm's matrix products at C=64, times 3 for forward +
backward), so the fractions compare the implementations as speeds; they are estimates. Timings are
the best of a few repeats. By default the clock is this process's CPU time on one thread (tokens
per CPU-second), which stays meaningful when other jobs share the machine; ``--clock wall`` gives
wall-clock figures (use it, with --threads, on an idle machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training import ops  # noqa: E402

B, H, DK, DV, C = 1, 4, 64, 64, 64
SLOW_BUDGET_S = 3.0  # skip a reference implementation where one run would take longer


# ------------------------------------------------------------------------------------------------
# timing and roofline
# ------------------------------------------------------------------------------------------------


CLOCK: Callable[[], float] = time.process_time


def best_time(fn: Callable[[], None], min_total: float = 0.4, max_reps: int = 5, slow: float = 1.0) -> float:
    """Best wall time of ``fn`` over up to ``max_reps`` repeats (stopping after ``min_total`` s).

    The first run is a warm-up, except that a first run slower than ``slow`` seconds is the figure.
    """
    t0 = CLOCK()
    fn()
    first = CLOCK() - t0
    if first > slow:
        return first
    times: list[float] = []
    start = CLOCK()
    while len(times) < max_reps and (not times or CLOCK() - start < min_total):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times)


def matmul_gflops(n: int = 1024) -> float:
    """fp32 GFLOP/s of an n x n x n matmul on this machine (the roofline)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = best_time(lambda: a @ b, min_total=0.5, max_reps=10)
    return 2 * n**3 / t / 1e9


def flops_per_token(op: str) -> float:
    """Matmul FLOPs per token of the chunked algorithm, forward + backward (3x forward)."""
    intra = 2 * C * DK + 2 * C * DV  # q k^T and (attn) v inside the chunk
    inter = 2 * DK * DV * 2  # q S and the state update k^T v
    fwd = intra + inter
    if op == "gated_linear_attention":
        fwd += 2 * 16 * DK  # elementwise diagonal sub-blocks (c=16) ~ one more pass over Dk
    if op in ("delta_rule", "gated_delta_rule"):
        fwd += 2 * C * DK + C * (DK + DV) + 2 * DK * DV  # k k^T, the triangular solve, w S
    return 3 * fwd


# ------------------------------------------------------------------------------------------------
# implementations
# ------------------------------------------------------------------------------------------------


def recurrent(q, k, v, decay=None, beta=None):
    """Step-by-step recurrence (the literal definition): S [B, H, Dk, Dv]."""
    scale = q.shape[-1] ** -0.5
    S = q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    outs = []
    for t in range(q.shape[2]):
        if decay is not None:
            S = S * decay(t)
        kt, vt = k[:, :, t], v[:, :, t]
        if beta is None:
            S = S + kt.unsqueeze(-1) * vt.unsqueeze(-2)
        else:
            pred = (S * kt.unsqueeze(-1)).sum(-2)
            S = S + beta[:, :, t, None, None] * kt.unsqueeze(-1) * (vt - pred).unsqueeze(-2)
        outs.append(((q[:, :, t] * scale).unsqueeze(-1) * S).sum(-2))
    return torch.stack(outs, dim=2)


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


def build(op: str, L: int):
    """Inputs (leaf tensors) and {implementation: callable returning the output [B, H, L, Dv]}."""
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
    impls: dict[str, Callable[[], torch.Tensor]] = {}
    if op == "linear_attention":
        impls["ours"] = lambda: ops.linear_attention(q, k, v)
        impls["recurrent"] = lambda: recurrent(q, k, v)
        m = load_fla_naive("linear_attn")
        if m is not None:
            impls["fla naive chunk"] = lambda: bthd(m.naive_chunk_linear_attn(bthd(q), bthd(k), bthd(v)))
    elif op == "retention":
        impls["ours"] = lambda: ops.retention(q, k, v, gamma)
        impls["recurrent"] = lambda: recurrent(q, k, v, decay=lambda t: gamma.view(1, H, 1, 1))
        m = load_fla_naive("simple_gla")
        if m is not None:
            lg = gamma.log().view(1, 1, H).expand(B, L, H)
            impls["fla naive chunk"] = lambda: bthd(m.naive_chunk_simple_gla(bthd(q), bthd(k), bthd(v), lg)[0])
    elif op == "gated_linear_attention":
        impls["ours"] = lambda: ops.gated_linear_attention(q, k, v, g_chan)
        impls["recurrent"] = lambda: recurrent(q, k, v, decay=lambda t: g_chan[:, :, t].exp()[..., None])
        # fla ships only a recurrent naive GLA (no chunked one)
    elif op == "delta_rule":
        impls["ours"] = lambda: ops.delta_rule(q, k, v, beta)
        impls["recurrent"] = lambda: recurrent(q, k, v, beta=beta)
        m = load_fla_naive("delta_rule")
        if m is not None:
            impls["fla naive chunk"] = lambda: m.delta_rule_chunkwise(q, k, v, beta, chunk_size=C)[0]
    elif op == "gated_delta_rule":
        impls["ours"] = lambda: ops.gated_delta_rule(q, k, v, beta, g_head)
        impls["recurrent"] = lambda: recurrent(
            q, k, v, beta=beta, decay=lambda t: g_head[:, :, t].exp()[..., None, None]
        )
        m = load_fla_naive("gated_delta_rule")
        if m is not None:
            impls["fla naive chunk"] = lambda: bthd(
                m.naive_chunk_gated_delta_rule(bthd(q), bthd(k), bthd(v), bthd(g_head), bthd(beta), chunk_size=C)[0]
            )
    return leaves, impls


def fwd_bwd(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        for t in leaves:
            t.grad = None
        fn().sum().backward()

    return run


OPS = ["linear_attention", "retention", "gated_linear_attention", "delta_rule", "gated_delta_rule"]
IMPLS = ["ours", "recurrent", "fla naive chunk"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    roof = matmul_gflops()
    unit = "per CPU-second (process time)" if args.clock == "cpu" else "per wall-clock second"
    print(f"torch {torch.__version__}, {args.threads} thread(s), fp32, B={B} H={H} Dk=Dv={DK}, chunk {C}")
    print(f"roofline: fp32 1024^3 matmul = {roof:.1f} GFLOP/s {unit}")
    print(f"figures: forward+backward tokens {unit} (estimated % of the matmul roofline); noisy on a shared machine\n")
    header = f"{'op':<24}{'L':>6}" + "".join(f"{name:>26}" for name in IMPLS) + f"{'ours/recurrent':>16}"
    print(header)
    print("-" * len(header))
    notes: list[str] = []
    run_time: dict[tuple[str, str, int], float] = {}
    for op in OPS:
        fpt = flops_per_token(op)
        for L in args.lengths:
            leaves, impls = build(op, L)
            cells, tps = [], {}
            for name in IMPLS:
                if name not in impls:
                    cells.append("n/a")
                    continue
                prev = [(l0, t0) for (o, n0, l0), t0 in run_time.items() if (o, n0) == (op, name)]
                if prev and name != "ours":
                    l0, t0 = max(prev)
                    projected = t0 * L / l0  # all of them are at least linear in L
                    if projected > SLOW_BUDGET_S:
                        cells.append("skipped")
                        notes.append(
                            f"{op} L={L}: {name} skipped (projected {projected:.1f} s per run "
                            f"> {SLOW_BUDGET_S:.0f} s budget)"
                        )
                        continue
                t = best_time(fwd_bwd(impls[name], leaves))
                run_time[(op, name, L)] = t
                tok_s = B * L / t
                tps[name] = tok_s
                frac = tok_s * fpt / (roof * 1e9)
                cells.append(f"{tok_s:>11,.0f} ({100 * frac:5.1f}%)")
            speedup = f"{tps['ours'] / tps['recurrent']:.1f}x" if "recurrent" in tps else "-"
            print(f"{op:<24}{L:>6}" + "".join(f"{c:>26}" for c in cells) + f"{speedup:>16}")
    if notes:
        print("\nnotes:")
        for n in notes:
            print("  " + n)
    print("  fla ships no chunked naive GLA (only a recurrent one): n/a. 'fla naive chunk' for retention is")
    print("  naive_chunk_simple_gla with g = log(gamma); fla's naive delta rule inverts with a Python loop.")


if __name__ == "__main__":
    main()
