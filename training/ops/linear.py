"""Causal linear attention, chunked, and its naive recurrent reference."""

from __future__ import annotations

import torch

from training.ops.common import _btHd, _check_qkv, _chunk, _chunks, _fla_ops, _scale, _tril_mask, _unchunk, _use_fla, recurrence


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



def naive_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, normalize: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """:func:`linear_attention` one position at a time (``S_t = S_{t-1} + k_t v_t^T``)."""
    return recurrence(q, k, v, scale=scale, normalize=normalize, eps=eps)
