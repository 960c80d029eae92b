"""training.ops against step-by-step recurrences (written here) and, where installed, fla's
pure-PyTorch references (fla/ops/*/naive.py, loaded by file path so fla's Triton code is not run).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training import ops
from training.ops import common as ops_common
from training.ops import delta as delta_mod
from training.ops import gla as gla_mod

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = RTOL = 1e-4

# (B, H, L, Dk, Dv, chunk): L not divisible by the chunk, L < chunk, several chunks, chunk 16/64
SHAPES = [
    (2, 2, 50, 8, 12, 16),
    (1, 3, 130, 16, 8, 64),
    (2, 1, 64, 8, 8, 16),
    (1, 2, 10, 4, 6, 64),
    (1, 1, 200, 8, 4, 64),
]



# ------------------------------------------------------------------------------------------------
# recurrent references: one step per position, the literal definition of each op
# ------------------------------------------------------------------------------------------------


def rand_inputs(B, H, L, Dk, Dv, seed=0, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, Dk, generator=g, dtype=dtype)
    k = torch.randn(B, H, L, Dk, generator=g, dtype=dtype)
    v = torch.randn(B, H, L, Dv, generator=g, dtype=dtype)
    beta = torch.rand(B, H, L, generator=g, dtype=dtype)
    g_head = -torch.rand(B, H, L, generator=g, dtype=dtype) * 0.5
    g_chan = F.logsigmoid(torch.randn(B, H, L, Dk, generator=g, dtype=dtype)) / 4
    tensors = dict(q=q, k=k, v=v, beta=beta, g_head=g_head, g_chan=g_chan)
    for t in tensors.values():
        t.requires_grad_(requires_grad)
    return tensors


def close(a, b):
    torch.testing.assert_close(a.double(), b.double(), atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------------
# forward: ours (fp32) against the recurrence (fp64)
# ------------------------------------------------------------------------------------------------


def _cases(t):
    """(our op in fp32, reference) pairs for each op, built on the same inputs ``t``."""
    q, k, v, beta, gh, gc = (t[n] for n in ("q", "k", "v", "beta", "g_head", "g_chan"))
    kn = lambda: ops.l2_norm(k)  # noqa: E731  (rebuilt per call: each side gets its own graph)
    H = q.shape[1]
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=q.dtype))
    f = lambda x: x.float()  # noqa: E731
    return {
        "linear_attention": (
            lambda C: ops.linear_attention(f(q), f(k), f(v), chunk_size=C),
            lambda: ops.recurrence(q, k, v),
        ),
        "linear_attention_normalized": (
            lambda C: ops.linear_attention(f(q.exp()), f(k.exp()), f(v), normalize=True, chunk_size=C),
            lambda: ops.recurrence(q.exp(), k.exp(), v, normalize=True),
        ),
        "linear_attention_scale": (
            lambda C: ops.linear_attention(f(q), f(k), f(v), scale=0.3, chunk_size=C),
            lambda: ops.recurrence(q, k, v, scale=0.3),
        ),
        "retention": (
            lambda C: ops.retention(f(q), f(k), f(v), f(gamma), chunk_size=C),
            lambda: ops.recurrence(q, k, v, decay=lambda s: gamma.view(1, H, 1, 1)),
        ),
        "simple_gla": (
            lambda C: ops.simple_gla(f(q), f(k), f(v), f(gh), chunk_size=C),
            lambda: ops.recurrence(q, k, v, decay=lambda s: gh[:, :, s].exp()[..., None, None]),
        ),
        "gated_linear_attention": (
            lambda C: ops.gated_linear_attention(f(q), f(k), f(v), f(gc), chunk_size=C),
            lambda: ops.recurrence(q, k, v, decay=lambda s: gc[:, :, s].exp()[..., None]),
        ),
        "delta_rule": (
            lambda C: ops.delta_rule(f(q), f(kn()), f(v), f(beta), chunk_size=C),
            lambda: ops.recurrence(q, kn(), v, beta=beta),
        ),
        "gated_delta_rule": (
            lambda C: ops.gated_delta_rule(f(q), f(kn()), f(v), f(beta), f(gh), chunk_size=C),
            lambda: ops.recurrence(q, kn(), v, beta=beta, decay=lambda s: gh[:, :, s].exp()[..., None, None]),
        ),
    }


OP_NAMES = list(_cases(rand_inputs(1, 1, 2, 2, 2)).keys())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", OP_NAMES)
def test_forward_matches_recurrence(name, shape):
    B, H, L, Dk, Dv, C = shape
    ours, ref = _cases(rand_inputs(B, H, L, Dk, Dv, seed=L))[name]
    out = ours(C)
    assert out.shape == (B, H, L, Dv) and out.dtype == torch.float32
    close(out, ref())


@pytest.mark.parametrize("name", OP_NAMES)
def test_chunk_size_does_not_change_result(name):
    t = rand_inputs(1, 2, 70, 8, 8, seed=3)
    ours, _ = _cases(t)[name]
    close(ours(16), ours(64))


def test_gla_strong_decay_is_stable():
    """Cumulative log decays down to about -2000 inside a chunk: no inf/NaN, still exact."""
    t = rand_inputs(1, 2, 96, 8, 8, seed=5)
    g = -torch.rand(1, 2, 96, 8, dtype=torch.float64) * 40.0
    g[..., :2] = 0.0  # some channels keep everything
    out = ops.gated_linear_attention(t["q"].float(), t["k"].float(), t["v"].float(), g.float(), chunk_size=64)
    assert torch.isfinite(out).all()
    ref = ops.recurrence(t["q"], t["k"], t["v"], decay=lambda s: g[:, :, s].exp()[..., None])
    close(out, ref)
    q, k, v, gg = (x.float().requires_grad_() for x in (t["q"], t["k"], t["v"], g))
    ops.gated_linear_attention(q, k, v, gg).sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v, gg))


def test_gated_delta_strong_decay_is_stable():
    t = rand_inputs(1, 2, 80, 8, 8, seed=6)
    g = -torch.rand(1, 2, 80, dtype=torch.float64) * 30.0
    kn = ops.l2_norm(t["k"])
    out = ops.gated_delta_rule(t["q"].float(), kn.float(), t["v"].float(), t["beta"].float(), g.float())
    ref = ops.recurrence(t["q"], kn, t["v"], beta=t["beta"], decay=lambda s: g[:, :, s].exp()[..., None, None])
    assert torch.isfinite(out).all()
    close(out, ref)


@pytest.mark.parametrize(
    "op, per_step",
    [
        ("gated_linear_attention", 10.0),  # chunks and 16-blocks over the span limit, 4-blocks under it
        ("gated_linear_attention", 40.0),  # even 4-blocks over it: the elementwise leaf
        ("simple_gla", 10.0),
        ("gated_delta_rule", 10.0),
    ],
)
def test_strong_decay_long_sequence_values_and_gradients(op, per_step):
    """L=2048 with log decays down to about -``per_step`` per step (mixed with gentle ones, so that
    some state survives a chunk): nothing non-finite, and equal to the recurrence in values and
    gradients - in fp64 to 1e-9 (the algorithm, every stable path included, is exact), in fp32 to
    1e-4 (gradients relative to their largest entry: summed over 2048 positions, the largest are
    ~20 and fp32 rounding alone moves them by ~1e-5 of that)."""
    B, H, L, Dk, Dv = 1, 2, 2048, 4, 4
    leaves = rand_inputs(B, H, L, Dk, Dv, seed=31, requires_grad=True)
    gen = torch.Generator().manual_seed(32)
    shape = (B, H, L, Dk) if op == "gated_linear_attention" else (B, H, L)
    strong = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5
    g = torch.where(strong, -per_step * torch.rand(shape, generator=gen, dtype=torch.float64),
                    -0.05 * torch.rand(shape, generator=gen, dtype=torch.float64)).requires_grad_()
    q, k, v, beta = leaves["q"], leaves["k"], leaves["v"], leaves["beta"]

    def ours(dtype):
        f = lambda x: x.to(dtype)  # noqa: E731
        if op == "gated_linear_attention":
            return ops.gated_linear_attention(f(q), f(k), f(v), f(g))
        if op == "simple_gla":
            return ops.simple_gla(f(q), f(k), f(v), f(g))
        return ops.gated_delta_rule(f(q), f(ops.l2_norm(k)), f(v), f(beta), f(g))

    def ref():
        if op == "gated_linear_attention":
            return ops.recurrence(q, k, v, decay=lambda s: g[:, :, s].exp()[..., None])
        if op == "simple_gla":
            return ops.recurrence(q, k, v, decay=lambda s: g[:, :, s].exp()[..., None, None])
        return ops.recurrence(q, ops.l2_norm(k), v, beta=beta, decay=lambda s: g[:, :, s].exp()[..., None, None])

    weight = torch.randn(B, H, L, Dv, generator=gen, dtype=torch.float64)
    inputs = [q, k, v, g] + ([beta] if op == "gated_delta_rule" else [])

    def run(fn):
        for t in inputs:
            t.grad = None
        out = fn()
        (out.double() * weight).sum().backward()
        return out.detach().double(), [t.grad.clone() for t in inputs]

    out_ref, grads_ref = run(ref)
    out64, grads64 = run(lambda: ours(torch.float64))
    out32, grads32 = run(lambda: ours(torch.float32))
    assert torch.isfinite(out32).all() and all(torch.isfinite(gr).all() for gr in grads32)
    torch.testing.assert_close(out64, out_ref, atol=1e-9, rtol=1e-9)
    close(out32, out_ref)
    for name, g64, g32, gr in zip("qkvgb", grads64, grads32, grads_ref):
        torch.testing.assert_close(g64, gr, atol=1e-9, rtol=1e-9, msg=lambda m: f"{op} d{name} fp64: {m}")
        scale = gr.abs().max().clamp(min=1.0)
        torch.testing.assert_close(g32 / scale, gr / scale, atol=1e-4, rtol=1e-4, msg=lambda m: f"{op} d{name}: {m}")


def test_gla_intra_chunk_paths_agree():
    """The three ways of computing GLA's intra-chunk scores (one factored product; sub-blocks
    through a reference decay; elementwise) give the same matrix, in fp64, for decays that select
    each path."""
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(3, 64, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    for per_step in (0.05, 3.0, 30.0):
        G = (-per_step * torch.rand(3, 64, 8, generator=gen, dtype=torch.float64)).cumsum(-2)
        want = torch.einsum("...id,...jd,...ijd->...ij", q, k, (G.unsqueeze(-2) - G.unsqueeze(-3)).clamp(max=0).exp())
        want = want.tril()
        for splits in [(16, 4), (8,), ()]:
            got = gla_mod._gla_intra_chunk(q, k, G, splits)
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


def test_unit_lower_inverse_and_its_gradient():
    gen = torch.Generator().manual_seed(5)
    A = (0.3 * torch.randn(2, 3, 12, 12, generator=gen, dtype=torch.float64)).tril(-1).requires_grad_()
    T = delta_mod._UnitLowerInverse.apply(A)
    eye = torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(T @ (A + eye), eye.expand(2, 3, 12, 12))
    assert torch.autograd.gradcheck(lambda a: delta_mod._UnitLowerInverse.apply(a.tril(-1)), (A,))


def test_default_chunk_size_is_tuned_per_op_and_checked():
    t = rand_inputs(1, 2, 70, 8, 8, seed=3)
    for name, (ours, _) in _cases(t).items():
        close(ours(None), ours(16))
    for op in ops.CHUNK_OPS:
        for length in (1, 10, 256, 1024, 4096, 10**6):
            for head_dim in (8, 32, 64, 256):
                c = ops.chunk_size_for(op, length, head_dim)
                assert isinstance(c, int) and ops.MIN_CHUNK <= c <= ops.MAX_CHUNK and c & (c - 1) == 0
                assert c <= max(ops.MIN_CHUNK, 2 * length)  # no chunk of pure padding
    # the measured choices (docs/OPS.md): C = D for the linear family, D / 2 for the delta rules
    assert ops.chunk_size_for("gated_linear_attention", 1024, 64) == 64
    assert ops.chunk_size_for("linear_attention", 256, 32) == 32
    assert ops.chunk_size_for("delta_rule", 1024, 64) == 32
    assert ops.chunk_size_for("gated_delta_rule", 256, 32) == 16
    with pytest.raises(ValueError, match="unknown op"):
        ops.chunk_size_for("nope", 10)
    with pytest.raises(ValueError, match="length"):
        ops.chunk_size_for("delta_rule", 0)
    q = torch.randn(1, 1, 8, 4)
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            ops.linear_attention(q, q, q, chunk_size=bad)


# ------------------------------------------------------------------------------------------------
# gradients: ours against autograd through the recurrence, on small shapes
# ------------------------------------------------------------------------------------------------


GRAD_SHAPES = [(1, 2, 37, 4, 6, 16), (2, 1, 20, 8, 4, 64)]


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", OP_NAMES)
def test_gradients_match_recurrence(name, shape):
    B, H, L, Dk, Dv, C = shape
    leaves = rand_inputs(B, H, L, Dk, Dv, seed=11 + L, requires_grad=True)
    ours, ref = _cases(leaves)[name]
    weight = torch.randn(B, H, L, Dv, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(fn):
        for t in leaves.values():
            t.grad = None
        (fn() * weight).sum().backward()
        return {n: (t.grad.clone() if t.grad is not None else None) for n, t in leaves.items()}

    g_ours = grads(lambda: ours(C).double())
    g_ref = grads(ref)
    used = [n for n, gr in g_ref.items() if gr is not None]
    assert {"q", "k", "v"} <= set(used)
    for n in used:
        assert g_ours[n] is not None, f"{name}: no gradient reached {n}"
        torch.testing.assert_close(g_ours[n], g_ref[n], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name} d{n}: {m}")


# ------------------------------------------------------------------------------------------------
# conv, norms, feature maps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["silu", None])
def test_short_conv_matches_loop(activation):
    x = torch.randn(2, 9, 5)
    w = torch.randn(5, 4)
    b = torch.randn(5)
    y = ops.short_conv(x, w, b, activation=activation)
    ref = torch.zeros_like(x)
    for t in range(9):
        for i in range(4):  # tap i looks back K-1-i positions
            s = t - (3 - i)
            if s >= 0:
                ref[:, t] += w[:, i] * x[:, s]
    ref = ref + b
    if activation == "silu":
        ref = F.silu(ref)
    close(y, ref)


def test_short_conv_is_causal_and_module_works():
    conv = ops.ShortConvolution(6, kernel_size=4)
    assert conv.weight.shape == (6, 4)
    x = torch.randn(1, 12, 6)
    y = conv(x)
    x2 = x.clone()
    x2[:, 7:] += 5.0
    y2 = conv(x2)
    assert torch.equal(y[:, :7], y2[:, :7])
    assert not torch.allclose(y[:, 7:], y2[:, 7:])
    with pytest.raises(ValueError):
        ops.short_conv(x, torch.randn(5, 4))


def test_norms():
    x = torch.randn(3, 7, 16)
    gate = torch.randn(3, 7, 16)
    w = torch.rand(16) + 0.5
    rms = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    close(ops.rms_norm(x, w), rms)
    close(ops.gated_rms_norm(x, gate, w), rms * F.silu(gate))
    close(ops.l2_norm(x).norm(dim=-1), torch.ones(3, 7))
    close(ops.l2_norm(x, dim=1).norm(dim=1), torch.ones(3, 16))
    m, gm = ops.RMSNorm(16), ops.GatedRMSNorm(16)
    assert m.weight.shape == gm.weight.shape == (16,)
    close(m(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    close(gm(x, gate), ops.gated_rms_norm(x, gate))


def test_feature_maps():
    x = torch.linspace(-3, 3, 13).view(1, 13)
    expected = {
        "identity": x,
        "elu_plus_one": F.elu(x) + 1,
        "relu": F.relu(x),
        "silu": F.silu(x),
        "softmax_head": torch.softmax(x, -1),
        "squared_relu": F.relu(x) ** 2,
    }
    assert set(expected) == set(ops.FEATURE_MAPS)
    for name, want in expected.items():
        close(ops.feature_map(name)(x), want)
    with pytest.raises(ValueError, match="unknown feature map"):
        ops.feature_map("nope")


def test_shape_errors_are_clear():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="beta"):
        ops.delta_rule(q, q, q, torch.rand(1, 2, 7))
    with pytest.raises(ValueError, match=r"\[B, H, L, Dk\]"):
        ops.linear_attention(q, q[..., :3], q)
    with pytest.raises(ValueError, match="decay"):
        ops.retention(q, q, q, torch.rand(3))


# ------------------------------------------------------------------------------------------------
# fla's pure-PyTorch references, loaded by file path (no fla/triton import)
# ------------------------------------------------------------------------------------------------


def _fla_root() -> Path | None:
    spec = importlib.util.find_spec("fla")  # does not execute fla/__init__.py
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def load_fla_naive(sub: str):
    """fla/ops/<sub>/naive.py as a module of its own, or skip with the reason."""
    root = _fla_root()
    if root is None:
        pytest.skip("fla (flash-linear-attention) is not installed")
    path = root / "ops" / sub / "naive.py"
    if not path.exists():
        pytest.skip(f"this fla version has no {path.relative_to(root)}")
    spec = importlib.util.spec_from_file_location(f"_fla_naive_{sub}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # a naive.py that needs fla itself (and so triton)
        pytest.skip(f"{path.name} of fla/ops/{sub} needs more than torch to import: {exc}")
    return module


def bthd(x):
    return x.transpose(1, 2).contiguous()


@pytest.mark.parametrize("L", [64, 100])
def test_fla_naive_linear_attn(L):
    m = load_fla_naive("linear_attn")
    t = rand_inputs(1, 2, L, 8, 8, seed=21, dtype=torch.float32)
    q, k, v = t["q"], t["k"], t["v"]
    ref, _ = m.naive_recurrent_linear_attn(bthd(q), bthd(k), bthd(v))
    close(ops.linear_attention(q, k, v), bthd(ref))
    qe, ke = q.exp(), k.exp()
    ref_n, _ = m.naive_recurrent_linear_attn(bthd(qe), bthd(ke), bthd(v), normalize=True)
    close(ops.linear_attention(qe, ke, v, normalize=True), bthd(ref_n))
    if L % 64 == 0:  # fla's naive chunked version needs whole chunks of 64
        close(ops.linear_attention(q, k, v), bthd(m.naive_chunk_linear_attn(bthd(q), bthd(k), bthd(v))))


def test_fla_naive_retention():
    m = load_fla_naive("retention")
    t = rand_inputs(2, 4, 90, 8, 8, seed=22, dtype=torch.float32)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(4.0))
    close(ops.retention(t["q"], t["k"], t["v"], gamma, chunk_size=32), m.naive_retention(t["q"], t["k"], t["v"]))


def test_fla_naive_simple_gla():
    m = load_fla_naive("simple_gla")
    t = rand_inputs(1, 2, 100, 8, 8, seed=23, dtype=torch.float32)
    q, k, v, g = t["q"], t["k"], t["v"], t["g_head"]
    ref, _ = m.naive_chunk_simple_gla(bthd(q), bthd(k), bthd(v), bthd(g))
    close(ops.simple_gla(q, k, v, g, chunk_size=16), bthd(ref))


def test_fla_naive_gla():
    m = load_fla_naive("gla")
    t = rand_inputs(2, 2, 75, 8, 6, seed=24, dtype=torch.float32)
    q, k, v, g = t["q"], t["k"], t["v"], t["g_chan"]
    ref, _ = m.naive_recurrent_gla(bthd(q), bthd(k), bthd(v), bthd(g))
    close(ops.gated_linear_attention(q, k, v, g), bthd(ref))


def test_fla_naive_delta_rule():
    m = load_fla_naive("delta_rule")
    t = rand_inputs(1, 2, 64, 8, 8, seed=25, dtype=torch.float32)
    q, k, v, beta = t["q"], ops.l2_norm(t["k"]), t["v"], t["beta"]
    ours = ops.delta_rule(q, k, v, beta, chunk_size=32)
    ref, _ = m.delta_rule_recurrence(q, k, v, beta)
    close(ours, ref)
    ref_chunk, _ = m.delta_rule_chunkwise(q, k, v, beta, chunk_size=32)
    close(ours, ref_chunk)


def test_fla_naive_gated_delta_rule():
    m = load_fla_naive("gated_delta_rule")
    t = rand_inputs(2, 2, 90, 8, 8, seed=26, dtype=torch.float32)
    q, k, v, beta, g = t["q"], ops.l2_norm(t["k"]), t["v"], t["beta"], t["g_head"]
    ours = ops.gated_delta_rule(q, k, v, beta, g)
    ref, _ = m.naive_recurrent_gated_delta_rule(bthd(q), bthd(k), bthd(v), bthd(beta), bthd(g))
    close(ours, bthd(ref))
    ref_chunk, _ = m.naive_chunk_gated_delta_rule(bthd(q), bthd(k), bthd(v), bthd(g), bthd(beta))
    close(ours, bthd(ref_chunk))


def test_fla_dispatch_is_cuda_only(monkeypatch):
    """On CPU tensors the pure-PyTorch path runs, and fla is not even imported to decide so."""
    def must_not_import():
        raise AssertionError("fla import attempted for a CPU tensor")

    monkeypatch.setattr(ops_common, "_fla_ops", must_not_import)
    x = torch.randn(1, 1, 4, 2)
    assert not ops_common._use_fla(x)
    assert ops.linear_attention(x, x, x).shape == x.shape



@pytest.mark.parametrize("name", ["linear_attention", "retention", "simple_gla", "gated_linear_attention",
                                  "delta_rule", "gated_delta_rule"])
def test_ops_run_under_cpu_bf16_autocast(name):
    """Under ``torch.autocast("cpu", bfloat16)`` (inputs rounded to bf16) every op runs forward and
    backward (decay sums, the triangular inverse and the delta state carry stay fp32 inside) and
    stays within bf16 rounding of the fp32 result."""
    t = rand_inputs(2, 2, 100, 16, 16, seed=41, dtype=torch.float32)
    cases = _cases(t)
    ours, _ = cases[name]
    ref = ours(32)
    leaves = {n: x.bfloat16().requires_grad_() for n, x in t.items()}
    cases_bf16 = _cases(leaves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cases_bf16[name][0](32)
    out.float().square().sum().backward()
    assert torch.isfinite(out.float()).all()
    assert leaves["q"].grad is not None and torch.isfinite(leaves["q"].grad.float()).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 3e-2, f"{name}: relative error {rel:.3g} under bf16 autocast"


# ------------------------------------------------------------------------------------------------
# the package's naive references (training.ops.NAIVE) agree with the chunked ops
# ------------------------------------------------------------------------------------------------


def test_naive_references_match_chunked_ops():
    t = rand_inputs(2, 2, 37, 8, 6, seed=3)
    q, k, v, beta, gh, gc = (t[n] for n in ("q", "k", "v", "beta", "g_head", "g_chan"))
    kn = ops.l2_norm(k)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(2, dtype=q.dtype))
    f = lambda x: x.float()  # noqa: E731
    pairs = {
        "linear_attention": (ops.linear_attention(f(q), f(k), f(v)), ops.NAIVE["linear_attention"](q, k, v)),
        "retention": (ops.retention(f(q), f(k), f(v), f(gamma)), ops.NAIVE["retention"](q, k, v, gamma)),
        "simple_gla": (ops.simple_gla(f(q), f(k), f(v), f(gh)), ops.NAIVE["simple_gla"](q, k, v, gh)),
        "gated_linear_attention": (ops.gated_linear_attention(f(q), f(k), f(v), f(gc)),
                                   ops.NAIVE["gated_linear_attention"](q, k, v, gc)),
        "delta_rule": (ops.delta_rule(f(q), f(kn), f(v), f(beta)), ops.NAIVE["delta_rule"](q, kn, v, beta)),
        "gated_delta_rule": (ops.gated_delta_rule(f(q), f(kn), f(v), f(beta), f(gh)),
                             ops.NAIVE["gated_delta_rule"](q, kn, v, beta, gh)),
    }
    for name, (ours, ref) in pairs.items():
        assert ours.shape == ref.shape, name
        close(ours, ref)
    x = torch.randn(2, 11, 5, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    for act in ("silu", None):
        close(ops.short_conv(x, w, b, act), ops.NAIVE["short_conv"](x, w, b, act))
