"""Gated linear attention (a decay per key channel), chunked with secondary chunking, and its
naive recurrent reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.ops.common import (
    _btHd,
    _carry_states,
    _check_qkv,
    _chunk,
    _chunks,
    _factored_decay_attention,
    _fla_ops,
    _scale,
    _small_spans,
    _SPAN_LIMIT,
    _tril_mask,
    _unchunk,
    _upcast,
    _use_fla,
    recurrence,
)


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



def naive_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """:func:`gated_linear_attention` one position at a time (``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``)."""
    return recurrence(q, k, v, scale=scale, decay=lambda t: log_decay[:, :, t].exp()[..., None])
