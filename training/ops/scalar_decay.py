"""Linear attention with a decay per head: retention (fixed gamma) and simple GLA (data-dependent),
chunked, and their naive recurrent references."""

from __future__ import annotations

import torch

from training.ops.common import (
    _btHd,
    _carry_states,
    _check_qkv,
    _chunk,
    _chunks,
    _factored_decay_attention,
    _fla_ops,
    _pairwise_decay,
    _scale,
    _small_spans,
    _unchunk,
    _upcast,
    _use_fla,
    recurrence,
)


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



def naive_retention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """:func:`retention` one position at a time (``S_t = gamma_h S_{t-1} + k_t v_t^T``)."""
    gamma = torch.as_tensor(decay, dtype=q.dtype, device=q.device).view(1, -1, 1, 1)
    return recurrence(q, k, v, scale=scale, decay=lambda t: gamma)


def naive_simple_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """:func:`simple_gla` one position at a time (``S_t = exp(g_t) S_{t-1} + k_t v_t^T``)."""
    return recurrence(q, k, v, scale=scale, decay=lambda t: log_decay[:, :, t].exp()[..., None, None])
