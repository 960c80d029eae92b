"""Reference token-mixing ops: the building blocks candidate mixers may import.

Everything here is pure PyTorch and runs on the CPU. The recurrent ops are computed in *chunks*
(the "chunkwise parallel" form of Yang et al., GLA 2023 / DeltaNet 2024): inside a chunk of ``C``
positions the work is a few ``C x C`` matrix products, and a ``Dk x Dv`` state is carried from one
chunk to the next, so the cost is O(L * C) in the length ``L`` instead of the O(L^2) of attention
and without the Python loop over every position of a naive recurrence.

Layout (see docs/CONTRACTS.md, "training.ops"): ``q, k: [B, H, L, Dk]``, ``v: [B, H, L, Dv]``,
outputs ``[B, H, L, Dv]``. ``q`` is multiplied by ``scale`` inside an op; ``scale=None`` means
``Dk ** -0.5`` (as in flash-linear-attention, "fla"). Lengths that are not a multiple of the chunk
size are zero-padded at the end (which changes no earlier output: the ops are causal).

On CUDA, when ``fla`` imports, the chunked ops dispatch to fla's Triton kernels (fla uses
``[B, T, H, D]``; the transposes are done here). fla picks its own chunk size there.

Recurrences computed (``S`` is the ``[Dk, Dv]`` state, ``o_t = (scale * q_t) S_t``):

- linear attention:   S_t = S_{t-1} + k_t v_t^T
- retention:          S_t = gamma_h S_{t-1} + k_t v_t^T                 (fixed per-head decay)
- simple GLA:         S_t = exp(g_t) S_{t-1} + k_t v_t^T                (data-dependent, per head)
- GLA:                S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T          (data-dependent, per channel)
- delta rule:         S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T
- gated delta rule:   S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T, a_t = exp(g_t)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "linear_attention",
    "retention",
    "simple_gla",
    "gated_linear_attention",
    "delta_rule",
    "gated_delta_rule",
    "short_conv",
    "ShortConvolution",
    "rms_norm",
    "gated_rms_norm",
    "l2_norm",
    "RMSNorm",
    "GatedRMSNorm",
    "feature_map",
    "FEATURE_MAPS",
    "fla_available",
    "chunk_size_for",
    "CHUNK_OPS",
]


# --------------------------------------------------------------------------------------------
# fla dispatch (CUDA only)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _fla_ops() -> Any | None:
    """Import fla's chunk kernels once; ``None`` when fla (or triton) is not importable."""
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.gla import chunk_gla
        from fla.ops.linear_attn import chunk_linear_attn
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # ImportError, or triton failing to initialise without a GPU
        return None
    return {
        "linear_attn": chunk_linear_attn,
        "simple_gla": chunk_simple_gla,
        "gla": chunk_gla,
        "delta_rule": chunk_delta_rule,
        "gated_delta_rule": chunk_gated_delta_rule,
    }


def fla_available() -> bool:
    """True when fla's Triton chunk kernels can be imported (they are used for CUDA tensors)."""
    return _fla_ops() is not None


def _use_fla(x: torch.Tensor) -> bool:
    return x.is_cuda and _fla_ops() is not None


def _btHd(x: torch.Tensor) -> torch.Tensor:
    """[B, H, L, ...] <-> [B, L, H, ...] (fla's layout); the swap is its own inverse."""
    return x.transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


# The chunk size an op uses when the caller passes ``chunk_size=None``. Measured on a 2-core AMD
# EPYC (Zen 3, AVX2) with benchmarks/ops_throughput.py --chunks 16 32 64 128 (forward + backward,
# fp32, one thread, medians; docs/OPS.md has the tables): the fastest chunk follows the head dim D,
# not the length (L = 128 ... 4096 all agree within noise). The linear-attention family is fastest
# at C = D (the intra-chunk products C x C x D then match the state products D x D x C); the delta
# rule family at C = D / 2 (its triangular inverse and its extra C x C products grow with C).
_LINEAR_FAMILY = ("linear_attention", "retention", "simple_gla", "gated_linear_attention")
_DELTA_FAMILY = ("delta_rule", "gated_delta_rule")
CHUNK_OPS: tuple[str, ...] = _LINEAR_FAMILY + _DELTA_FAMILY
MIN_CHUNK, MAX_CHUNK = 16, 64


def chunk_size_for(op: str, length: int, head_dim: int = 64) -> int:
    """The tuned chunk size of ``op`` (one of :data:`CHUNK_OPS`) for ``length`` and key head dim.

    ``D`` for the linear-attention family, ``D / 2`` for the delta rules, rounded to a power of two
    in [16, 64], and never more than the length rounded up to a power of two (no chunk of padding).
    """
    if op not in CHUNK_OPS:
        raise ValueError(f"chunk_size_for: unknown op {op!r}; choose one of {', '.join(CHUNK_OPS)}")
    if length < 1 or head_dim < 1:
        raise ValueError(f"chunk_size_for: length and head_dim must be >= 1, got {length} and {head_dim}")
    target = head_dim if op in _LINEAR_FAMILY else head_dim / 2
    chunk = 2 ** round(math.log2(max(target, 1)))
    chunk = min(MAX_CHUNK, max(MIN_CHUNK, chunk))
    return min(chunk, max(MIN_CHUNK, 1 << (length - 1).bit_length()))


def _chunk(op: str, chunk_size: int | None, length: int, head_dim: int) -> int:
    """``chunk_size`` checked, or the tuned default when it is None."""
    if chunk_size is None:
        return chunk_size_for(op, max(length, 1), head_dim)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def _check_qkv(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{name}: expected q, k of shape [B, H, L, Dk] and v of shape [B, H, L, Dv], got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def _pad_len(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Zero-pad dim 2 (the length) of a [B, H, L, ...] tensor to a multiple of ``chunk_size``."""
    pad = (-x.shape[2]) % chunk_size
    if pad == 0:
        return x
    widths = [0, 0] * (x.dim() - 3) + [0, pad]
    return F.pad(x, widths)


def _chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[B, H, L, ...] -> [B, H, N, C, ...] after padding L to N * C."""
    x = _pad_len(x, chunk_size)
    b, h, l = x.shape[:3]
    return x.reshape(b, h, l // chunk_size, chunk_size, *x.shape[3:])


def _unchunk(x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, H, N, C, D] -> [B, H, L, D] with the padding cut off."""
    b, h, n, c = x.shape[:4]
    return x.reshape(b, h, n * c, *x.shape[4:])[:, :, :length]


def _tril_mask(c: int, device: torch.device, diagonal: int = 0) -> torch.Tensor:
    return torch.ones(c, c, dtype=torch.bool, device=device).tril(diagonal)


def _no_autocast(x: torch.Tensor) -> Any:
    """Autocast switched off for ``x``'s device type (for the parts that must stay in fp32)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _pairwise_decay(G: torch.Tensor) -> torch.Tensor:
    """exp(G_i - G_j) for j <= i, 0 above the diagonal. ``G: [..., C]`` cumulative log decays.

    The upper triangle is masked *before* the exp, so no positive exponent is ever evaluated.
    """
    c = G.shape[-1]
    diff = G.unsqueeze(-1) - G.unsqueeze(-2)
    diff = diff.masked_fill(~_tril_mask(c, G.device), float("-inf"))
    return diff.exp()


# --------------------------------------------------------------------------------------------
# linear attention family
# --------------------------------------------------------------------------------------------


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    normalize: bool = False,
    chunk_size: int | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Causal linear attention ``o_t = sum_{s<=t} (scale q_t . k_s) v_s``.

    With ``normalize`` the output is divided by ``sum_{s<=t} scale q_t . k_s + eps`` (only sensible
    with a positive feature map). Feature maps are applied by the caller (see :func:`feature_map`).
    Shapes: ``q, k [B, H, L, Dk]``, ``v [B, H, L, Dv]`` -> ``[B, H, L, Dv]``. O(L * chunk_size).
    """
    _check_qkv("linear_attention", q, k, v)
    s = _scale(q, scale)
    if _use_fla(q):
        o, _ = _fla_ops()["linear_attn"](_btHd(q), _btHd(k), _btHd(v), scale=s, normalize=normalize)
        return _btHd(o)
    length = q.shape[2]
    chunk_size = _chunk("linear_attention", chunk_size, length, q.shape[-1])
    qs = q * s
    qc, kc, vc = _chunks(qs, chunk_size), _chunks(k, chunk_size), _chunks(v, chunk_size)
    kv = kc.transpose(-1, -2) @ vc  # [B, H, N, Dk, Dv] per-chunk contributions
    # state entering chunk n = sum of the contributions of chunks 0..n-1 (exclusive prefix sum)
    state = torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1]], dim=2).cumsum(2)
    attn = (qc @ kc.transpose(-1, -2)).masked_fill(~_tril_mask(qc.shape[3], q.device), 0.0)
    o = _unchunk(qc @ state + attn @ vc, length)
    if normalize:
        z = (qs * k.cumsum(2)).sum(-1, keepdim=True)
        o = o / (z + eps)
    return o


def _scalar_decay_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = q_t S_t; ``g: [B, H, L]`` (<= 0), q pre-scaled."""
    length = q.shape[2]
    qc, kc, vc = _chunks(q, chunk_size), _chunks(k, chunk_size), _chunks(v, chunk_size)
    G = _chunks(_upcast(g), chunk_size).cumsum(-1)  # [B, H, N, C] log decay from chunk start to i (fp32)
    if _small_spans(G.unsqueeze(-1)):
        return _unchunk(_factored_decay_attention(qc, kc, vc, G.unsqueeze(-1)), length)
    attn = (qc @ kc.transpose(-1, -2)) * _pairwise_decay(G)
    o_intra = attn @ vc
    q_in = qc * G.exp().unsqueeze(-1)  # queries see the entering state decayed to their position
    G_last = G[..., -1:]
    k_out = kc * (G_last - G).exp().unsqueeze(-1)  # keys decayed to the chunk's end
    kv = k_out.transpose(-1, -2) @ vc  # [B, H, N, Dk, Dv]: each chunk's write to the state
    states = _carry_states(kv, G_last.exp().unsqueeze(-1))
    return _unchunk(o_intra + q_in @ states, length)


def _small_spans(G: torch.Tensor) -> bool:
    """True when no chunk's cumulative log decay ``G: [B, H, N, C, Dk or 1]`` falls below -_SPAN_LIMIT."""
    return G.numel() == 0 or float((-G[:, :, :, -1]).detach().max()) <= _SPAN_LIMIT


def _factored_decay_attention(qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Chunked decayed linear attention when every chunk's decay span is at most ``_SPAN_LIMIT``.

    ``qc, kc: [B, H, N, C, Dk]`` (q pre-scaled), ``vc: [B, H, N, C, Dv]``, ``G: [B, H, N, C, Dk]``
    (GLA) or ``[B, H, N, C, 1]`` (a decay per head): cumulative log decays from the chunk start. The
    decay factors through the chunk's midpoint r: ``q_i exp(G_i - r)`` and ``k_j exp(r - G_j)``,
    exponents within +-span/2, so the intra-chunk scores are one matrix product; the inter-chunk
    terms follow by scaling the small ``[Dk, Dv]`` states: ``q_i exp(G_i) S = (q_i exp(G_i - r))
    (diag(exp(r)) S)`` and ``exp(G_last - G_j) k_j = exp(G_last - r) exp(r - G_j) k_j``. The cost
    is linear attention's plus two exps. Returns ``[B, H, N, C, Dv]``.
    """
    C = qc.shape[3]
    G_last = G[:, :, :, -1:]
    mid = (G[:, :, :, :1] + G_last) * 0.5
    q_rel, k_rel = qc * (G - mid).exp(), kc * (mid - G).exp()
    attn = (q_rel @ k_rel.transpose(-1, -2)).masked_fill(~_tril_mask(C, qc.device), 0.0)
    kv = (k_rel.transpose(-1, -2) @ vc) * (G_last - mid).exp().transpose(-1, -2)
    states = _carry_states(kv, G_last.exp().transpose(-1, -2))
    return attn @ vc + q_rel @ (states * mid.exp().transpose(-1, -2))


def _carry_states(kv: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
    """States entering each chunk: ``S_0 = 0``, ``S_{n+1} = carry_n * S_n + kv_n``.

    ``kv: [B, H, N, Dk, Dv]``, ``carry`` broadcastable to it (the decay over a whole chunk). The only
    sequential loop of the decayed ops: one multiply-add per chunk. ``unbind`` (not indexing) keeps
    the backward linear in the number of chunks.
    """
    state = torch.zeros_like(kv[:, :, 0])
    states = []
    for kv_n, carry_n in zip(kv.unbind(2), carry.expand(*kv.shape[:3], *carry.shape[3:]).unbind(2)):
        states.append(state)
        state = carry_n * state + kv_n
    return torch.stack(states, dim=2)


def retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Retention (RetNet): ``S_t = gamma_h S_{t-1} + k_t v_t^T``, ``o_t = scale q_t S_t``.

    ``decay: [H]`` (tensor or sequence), the per-head gamma in (0, 1), fixed (not data-dependent).
    RetNet uses ``gamma = 1 - 2 ** (-5 - arange(H))``. Shapes as :func:`linear_attention`.
    """
    _check_qkv("retention", q, k, v)
    decay = torch.as_tensor(decay, device=q.device).float()  # fp32 even under autocast: 1 - 2^-12 != 1
    if decay.shape != (q.shape[1],):
        raise ValueError(f"retention: decay must have shape [H]=[{q.shape[1]}], got {tuple(decay.shape)}")
    log_gamma = decay.log()
    s = _scale(q, scale)
    if _use_fla(q):
        o, _ = _fla_ops()["simple_gla"](_btHd(q), _btHd(k), _btHd(v), g_gamma=log_gamma, scale=s)
        return _btHd(o)
    g = log_gamma.view(1, -1, 1).expand(q.shape[0], -1, q.shape[2])
    return _scalar_decay_attention(q * s, k, v, g, _chunk("retention", chunk_size, q.shape[2], q.shape[-1]))


def simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Linear attention with a data-dependent *per-head* decay (Mamba-2 / "simple GLA").

    ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``; ``log_decay = g: [B, H, L]``, values <= 0.
    """
    _check_qkv("simple_gla", q, k, v)
    if log_decay.shape != q.shape[:3]:
        raise ValueError(f"simple_gla: log_decay must be [B, H, L]={tuple(q.shape[:3])}, got {tuple(log_decay.shape)}")
    s = _scale(q, scale)
    if _use_fla(q):
        o, _ = _fla_ops()["simple_gla"](_btHd(q), _btHd(k), _btHd(v), g=_btHd(log_decay), scale=s)
        return _btHd(o)
    return _scalar_decay_attention(q * s, k, v, log_decay, _chunk("simple_gla", chunk_size, q.shape[2], q.shape[-1]))


def gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Gated linear attention (GLA): ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``.

    ``log_decay = g: [B, H, L, Dk]`` (<= 0), a data-dependent decay per key channel. Computed
    stably: only differences of cumulative log decays ``G_i - G_j`` with ``i`` after ``j`` are
    exponentiated (never a positive number); see ``_gla_intra_chunk`` for the intra-chunk part.
    """
    _check_qkv("gated_linear_attention", q, k, v)
    if log_decay.shape != q.shape:
        raise ValueError(
            f"gated_linear_attention: log_decay must have q's shape {tuple(q.shape)}, got {tuple(log_decay.shape)}"
        )
    s = _scale(q, scale)
    if _use_fla(q):
        o, _ = _fla_ops()["gla"](_btHd(q), _btHd(k), _btHd(v), g=_btHd(log_decay), scale=s)
        return _btHd(o)
    length = q.shape[2]
    C = _chunk("gated_linear_attention", chunk_size, length, q.shape[-1])
    qc, kc, vc = _chunks(q * s, C), _chunks(k, C), _chunks(v, C)
    G = _chunks(_upcast(log_decay), C).cumsum(3)  # [B, H, N, C, Dk], fp32 even from bf16 gates
    if _small_spans(G):
        return _unchunk(_factored_decay_attention(qc, kc, vc, G), length)
    G_last = G[:, :, :, -1:]  # [B, H, N, 1, Dk]
    carry = G_last.exp().transpose(-1, -2)  # [B, H, N, Dk, 1]: per-row (key channel) decay of a chunk
    attn = _gla_intra_chunk(qc, kc, G)
    o_intra = attn @ vc
    q_in = qc * G.exp()
    k_out = kc * (G_last - G).exp()
    kv = k_out.transpose(-1, -2) @ vc  # [B, H, N, Dk, Dv]
    states = _carry_states(kv, carry)
    return _unchunk(o_intra + q_in @ states, length)


# Exponents of a factored decay stay within +-_SPAN_LIMIT / 2 (e^30 ~ 1e13): far from fp32's
# overflow (e^88) and from its denormals, so the factored products keep full relative precision.
_SPAN_LIMIT = 60.0


def _gla_intra_chunk(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor, splits: tuple[int, ...] = (16, 4)) -> torch.Tensor:
    """A_ij = sum_d q_id k_jd exp(G_id - G_jd) for j <= i, else 0: ``[..., C, Dk] -> [..., C, C]``.

    ``G`` is the cumulative log decay (non-increasing along C). Secondary chunking, as fla's chunk
    kernels do, so that the work is matrix products and not a ``[C, C, Dk]`` elementwise tensor:

    - When every block's log-decay span ``G_first - G_last`` is at most ``_SPAN_LIMIT`` (the usual
      case: fla's GLA gates decay by ~1/16 per step), the decay factors through the block's midpoint
      ``r``: ``(q_i exp(G_i - r)) . (k_j exp(r - G_j))``, exponents within +-span/2, one matmul.
    - Otherwise the block is cut into sub-blocks of ``splits[0]``. Row block ``a`` meets every key
      before its first position through ``G_ref = G[a*s - 1]``: ``(q_i exp(G_i - G_ref)) . (k_j
      exp(G_ref - G_j))``, both exponents <= 0 for the pairs kept (the others are clamped to 0 before
      the exp and masked out), one matmul per row block. The diagonal sub-blocks recurse with
      ``splits[1:]``; with no splits left they are computed elementwise (clamped the same way).

    No exp ever overflows, for any decay (tested with log decays of -10 per step).
    """
    *lead, C, dk = q.shape
    span = float((G[..., 0, :] - G[..., -1, :]).detach().max()) if C > 1 else 0.0
    if span <= _SPAN_LIMIT:
        mid = (G[..., :1, :] + G[..., -1:, :]) * 0.5
        A = (q * (G - mid).exp()) @ (k * (mid - G).exp()).transpose(-1, -2)
        return A.masked_fill(~_tril_mask(C, q.device), 0.0)
    if not splits or C <= splits[0] or C % splits[0]:
        decay = (G.unsqueeze(-2) - G.unsqueeze(-3)).clamp(max=0.0).exp()  # [..., C(i), C(j), Dk]
        A = (q.unsqueeze(-2) * k.unsqueeze(-3) * decay).sum(-1)
        return A.masked_fill(~_tril_mask(C, q.device), 0.0)
    s = splits[0]
    m = C // s
    qs, ks, Gs = (x.reshape(*lead, m, s, dk) for x in (q, k, G))
    diag = _gla_intra_chunk(qs, ks, Gs, splits[1:])  # [..., m, s, s]
    G_ref = Gs[..., :-1, -1:, :]  # [..., m-1, 1, Dk]: G just before row block a = 1..m-1
    q_rel = qs[..., 1:, :, :] * (Gs[..., 1:, :, :] - G_ref).exp()  # exponent <= 0
    k_rel = k[..., None, : C - s, :] * (G_ref - G[..., None, : C - s, :]).clamp(max=0.0).exp()
    off = q_rel @ k_rel.transpose(-1, -2)  # [..., m-1, s, C-s]
    later = torch.arange(C - s, device=q.device).view(1, -1) >= torch.arange(1, m, device=q.device).view(-1, 1) * s
    off = off.masked_fill(later.unsqueeze(-2), 0.0)  # keep keys before the row block only
    off = F.pad(torch.cat([off.new_zeros(*lead, 1, s, C - s), off], dim=-3), (0, s))  # [..., m, s, C]
    eye = torch.eye(m, dtype=q.dtype, device=q.device).view(m, 1, m, 1)
    blockdiag = (diag.unsqueeze(-2) * eye).reshape(*lead, m, s, C)
    return (off + blockdiag).reshape(*lead, C, C)


# --------------------------------------------------------------------------------------------
# delta rule family (chunked WY / UT form)
# --------------------------------------------------------------------------------------------


class _UnitLowerInverse(torch.autograd.Function):
    """``T = (I + A)^{-1}`` for a batch of strictly lower-triangular ``A: [..., C, C]``.

    Only the strictly lower part of ``A`` is read. Forward: one batched triangular solve against
    the identity (fp16/bf16 are solved in fp32). Backward: ``dA = -strict_tril(T^T dT T^T)``, two
    matrix products, instead of autograd's second triangular solve with many right-hand sides.
    """

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor) -> torch.Tensor:
        C = A.shape[-1]
        work = _upcast(A)
        eye = torch.eye(C, dtype=work.dtype, device=A.device)
        T = torch.linalg.solve_triangular(work, eye.expand_as(work), upper=False, unitriangular=True)
        T = T.to(A.dtype)
        ctx.save_for_backward(T)
        return T

    @staticmethod
    def backward(ctx: Any, grad_T: torch.Tensor) -> torch.Tensor:
        (T,) = ctx.saved_tensors
        Tt = T.transpose(-1, -2)
        return -(Tt @ grad_T @ Tt).tril(-1)


class _DeltaStates(torch.autograd.Function):
    """The sequential part of the chunked delta rule, with a hand-written backward.

    Inputs per chunk n (stacked on dim 2): ``u, w: [B, H, N, C, Dv|Dk]``, ``k_out: [B, H, N, C, Dk]``
    and ``carry: [B, H, N, 1, 1]`` (the decay over the whole chunk; ones without a gate). With
    ``S_0 = 0``: ``v_n = u_n - w_n S_n`` and ``S_{n+1} = carry_n S_n + k_out_n^T v_n``. Returns the
    states entering each chunk ``S: [B, H, N, Dk, Dv]`` and the corrected values ``v: [B, H, N, C,
    Dv]``. Forward and backward each take two ``[C, D] x [D, D]`` products per chunk in a loop; the
    rest of the backward (the gradients of ``w``, ``k_out`` and ``carry``) is batched over all
    chunks after the loop. Autograd through the loop would record ~10 ops per chunk instead.
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, w: torch.Tensor, k_out: torch.Tensor, carry: torch.Tensor):
        b, h, n, c, dv = u.shape
        dk = w.shape[-1]
        states = u.new_empty(b, h, n, dk, dv)
        v_new = torch.empty_like(u)
        state = u.new_zeros(b, h, dk, dv)
        kT = k_out.transpose(-1, -2)
        for i in range(n):
            states[:, :, i] = state
            v_i = torch.baddbmm(u[:, :, i].reshape(b * h, c, dv), w[:, :, i].reshape(b * h, c, dk),
                                state.reshape(b * h, dk, dv), alpha=-1.0).view(b, h, c, dv)
            v_new[:, :, i] = v_i
            state = carry[:, :, i] * state + kT[:, :, i] @ v_i
        ctx.save_for_backward(w, k_out, carry, states, v_new)
        return states, v_new

    @staticmethod
    def backward(ctx: Any, d_states: torch.Tensor, d_v: torch.Tensor):
        w, k_out, carry, states, v_new = ctx.saved_tensors
        n = w.shape[2]
        d_states = torch.zeros_like(states) if d_states is None else d_states
        d_v = torch.zeros_like(v_new) if d_v is None else d_v.clone()  # becomes the total dv
        g_next = torch.empty_like(states)  # gradient reaching S_{n+1} from later chunks
        gS = torch.zeros_like(states[:, :, 0])
        wT = w.transpose(-1, -2)
        for i in range(n - 1, -1, -1):
            g_next[:, :, i] = gS
            gv = d_v[:, :, i] + k_out[:, :, i] @ gS
            d_v[:, :, i] = gv
            gS = carry[:, :, i] * gS - wT[:, :, i] @ gv + d_states[:, :, i]
        d_u = d_v
        d_w = -(d_v @ states.transpose(-1, -2))
        d_k = v_new @ g_next.transpose(-1, -2)
        d_carry = (states * g_next).sum((-1, -2), keepdim=True)
        return d_u, d_w, d_k, d_carry


def _chunk_delta(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    """Chunked (gated) delta rule; q pre-scaled, ``beta, g: [B, H, L]``.

    Inside a chunk the sequential updates collapse (the WY / UT transform) into one unit
    lower-triangular inverse: with ``A = strict_tril(diag(beta) (K K^T * Gamma))`` and ``Gamma_ij =
    exp(G_i - G_j)``, ``T = (I + A)^{-1}``, ``u = T diag(beta) V`` and ``w = T diag(beta) diag(exp(G))
    K``; the state entering the chunk then corrects the values, ``v_new = u - w S``, exactly like one
    big delta step. ``T`` comes from one triangular solve batched over every chunk and head at once
    (:class:`_UnitLowerInverse`), so ``u`` and ``w`` are plain matrix products; only the state carry
    (two ``[C, D] x [D, D]`` products per chunk, :class:`_DeltaStates`) is sequential.
    """
    length, C = q.shape[2], chunk_size
    qc, kc, vc = _chunks(q, C), _chunks(k, C), _chunks(v, C)
    bc = _chunks(beta, C).unsqueeze(-1)  # [B, H, N, C, 1]
    kb = kc * bc
    kT = kc.transpose(-1, -2)
    kk = kb @ kT  # [B, H, N, C, C]: beta_i k_i . k_j
    qk = qc @ kT
    if g is None:
        G = None
        qk = qk.masked_fill(~_tril_mask(C, q.device), 0.0)
        rhs_k = kb
    else:
        G = _chunks(_upcast(g), C).cumsum(-1)  # [B, H, N, C], fp32 even from bf16 gates
        gamma = _pairwise_decay(G)
        kk = kk * gamma
        qk = qk * gamma
        rhs_k = kb * G.exp().unsqueeze(-1)
    with _no_autocast(q):  # the inverse and (below) the state carry run in fp32 under autocast
        T = _UnitLowerInverse.apply(_upcast(kk))  # reads the strictly lower part only
    u = T @ (vc * bc)
    w = T @ rhs_k
    if G is None:
        q_in, k_out = qc, kc
        carry = q.new_ones(*qc.shape[:3], 1, 1)
    else:
        G_last = G[..., -1:]
        q_in = qc * G.exp().unsqueeze(-1)
        k_out = kc * (G_last - G).exp().unsqueeze(-1)
        carry = G_last.exp().unsqueeze(-1)  # [B, H, N, 1, 1]
    # the sequential part: per chunk, correct the values by what the entering state predicts
    with _no_autocast(q):
        states, v_new = _DeltaStates.apply(*(_upcast(x) for x in (u, w, k_out, carry)))
    o = q_in @ states + qk @ v_new
    return _unchunk(o, length)


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """DeltaNet: ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``, ``o_t = scale q_t S_t``.

    ``beta: [B, H, L]`` in (0, 1); ``k`` should be L2-normalised by the caller (see
    :func:`l2_norm`), otherwise the recurrence can diverge. Shapes as :func:`linear_attention`.
    """
    _check_qkv("delta_rule", q, k, v)
    if beta.shape != q.shape[:3]:
        raise ValueError(f"delta_rule: beta must be [B, H, L]={tuple(q.shape[:3])}, got {tuple(beta.shape)}")
    s = _scale(q, scale)
    if _use_fla(q):
        o, _ = _fla_ops()["delta_rule"](_btHd(q), _btHd(k), _btHd(v), _btHd(beta), scale=s)
        return _btHd(o)
    return _chunk_delta(q * s, k, v, beta, None, _chunk("delta_rule", chunk_size, q.shape[2], q.shape[-1]))


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Gated DeltaNet: ``S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T``, ``a_t = exp(g_t)``.

    ``beta: [B, H, L]`` in (0, 1), ``log_decay = g: [B, H, L]`` (<= 0), ``k`` L2-normalised.
    """
    _check_qkv("gated_delta_rule", q, k, v)
    if beta.shape != q.shape[:3] or log_decay.shape != q.shape[:3]:
        raise ValueError(
            f"gated_delta_rule: beta and log_decay must be [B, H, L]={tuple(q.shape[:3])}, got "
            f"{tuple(beta.shape)} and {tuple(log_decay.shape)}"
        )
    s = _scale(q, scale)
    if _use_fla(q):
        o, _ = _fla_ops()["gated_delta_rule"](
            _btHd(q), _btHd(k), _btHd(v), g=_btHd(log_decay), beta=_btHd(beta), scale=s
        )
        return _btHd(o)
    return _chunk_delta(q * s, k, v, beta, log_decay, _chunk("gated_delta_rule", chunk_size, q.shape[2], q.shape[-1]))


# --------------------------------------------------------------------------------------------
# short causal convolution
# --------------------------------------------------------------------------------------------


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Causal depthwise convolution over the length: ``y_t = sum_i w[:, i] * x_{t-K+1+i}``.

    ``x: [B, L, D]``, ``weight: [D, K]`` (the last tap multiplies the current position),
    ``bias: [D]`` or None; ``activation`` is ``"silu"`` or None. Returns ``[B, L, D]``.
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"short_conv: expected x [B, L, D] and weight [D, K], got {tuple(x.shape)}, {tuple(weight.shape)}")
    d, kernel = weight.shape
    y = F.conv1d(F.pad(x.transpose(1, 2), (kernel - 1, 0)), weight.unsqueeze(1), bias, groups=d)
    y = y.transpose(1, 2)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"short_conv: unknown activation {activation!r} (use 'silu' or None)")
    return y


class ShortConvolution(nn.Module):
    """Module form of :func:`short_conv`: ``[B, L, d] -> [B, L, d]``, ``d * kernel_size`` weights."""

    def __init__(self, d: int, kernel_size: int = 4, activation: str | None = "silu", bias: bool = False):
        super().__init__()
        self.d, self.kernel_size, self.activation = d, kernel_size, activation
        bound = 1.0 / math.sqrt(kernel_size)  # nn.Conv1d's default for a depthwise conv
        self.weight = nn.Parameter(torch.empty(d, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return short_conv(x, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return f"{self.d}, kernel_size={self.kernel_size}, activation={self.activation}"


# --------------------------------------------------------------------------------------------
# norms and feature maps
# --------------------------------------------------------------------------------------------


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight`` (fp16/bf16 upcast to fp32)."""
    xf = _upcast(x)
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else y * weight


def gated_rms_norm(
    x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """``rms_norm(x, weight) * silu(gate)`` (fla's FusedRMSNormGated, the swish output gate)."""
    return rms_norm(x, weight, eps) * F.silu(gate)


def l2_norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` along ``dim`` (fla's l2norm)."""
    xf = _upcast(x)
    return (xf * torch.rsqrt(xf.pow(2).sum(dim, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain (initialised to 1)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x) * silu(gate)`` with a learnable gain (initialised to 1)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(x, gate, self.weight, self.eps)


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def _softmax_head(x: torch.Tensor) -> torch.Tensor:
    return x.softmax(-1)


def _squared_relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).pow(2)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": _identity,
    "elu_plus_one": _elu_plus_one,
    "relu": F.relu,
    "silu": F.silu,
    "softmax_head": _softmax_head,  # softmax over the head dim (Hedgehog-style, positive)
    "squared_relu": _squared_relu,
}


def feature_map(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise feature map called ``name`` (one of :data:`FEATURE_MAPS`)."""
    try:
        return FEATURE_MAPS[name]
    except KeyError:
        raise ValueError(f"unknown feature map {name!r}; choose one of {', '.join(FEATURE_MAPS)}") from None
