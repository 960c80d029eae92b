"""What every chunked op shares: fla dispatch on CUDA, chunk sizes, chunking helpers, the
decay factorisation, the state carry, and the literal step-by-step recurrence that all naive
references are built from."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

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



def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x



# Exponents of a factored decay stay within +-_SPAN_LIMIT / 2 (e^30 ~ 1e13): far from fp32's
# overflow (e^88) and from its denormals, so the factored products keep full relative precision.
_SPAN_LIMIT = 60.0



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



# --------------------------------------------------------------------------------------------
# the literal recurrence (naive references)
# --------------------------------------------------------------------------------------------


def recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    decay: Callable[[int], torch.Tensor] | None = None,
    beta: torch.Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The definition of every chunked op, one position at a time over ``S: [B, H, Dk, Dv]``.

    ``decay(t)`` is the multiplicative decay of step ``t``, broadcastable to ``S`` (None: no
    decay). With ``beta: [B, H, L]`` the update is the (gated) delta rule ``S = a S + beta k (v -
    (a S)^T k)^T``, else the additive ``S = a S + k v^T``; ``o_t = (scale q_t) S_t``, divided by
    ``scale q_t . sum_{s<=t} k_s + eps`` with ``normalize``. O(L) Python steps: a reference for
    tests and benchmarks, not for training.
    """
    B, H, L, Dk = q.shape
    s = Dk ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, Dk, v.shape[-1])
    z = q.new_zeros(B, H, Dk)
    outs = []
    for t in range(L):
        if decay is not None:
            S = decay(t) * S
        kt, vt = k[:, :, t], v[:, :, t]
        if beta is None:
            S = S + kt.unsqueeze(-1) * vt.unsqueeze(-2)
        else:
            pred = (S * kt.unsqueeze(-1)).sum(-2)  # S^T k
            S = S + beta[:, :, t, None, None] * kt.unsqueeze(-1) * (vt - pred).unsqueeze(-2)
        qt = q[:, :, t] * s
        o = (qt.unsqueeze(-1) * S).sum(-2)
        if normalize:
            z = z + kt
            o = o / ((qt * z).sum(-1, keepdim=True) + eps)
        outs.append(o)
    return torch.stack(outs, dim=2)
