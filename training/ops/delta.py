"""The delta rule and the gated delta rule, chunked in the WY / UT form, and their naive
recurrent references."""

from __future__ import annotations

from typing import Any

import torch

from training.ops.common import (
    _btHd,
    _check_qkv,
    _chunk,
    _chunks,
    _fla_ops,
    _no_autocast,
    _pairwise_decay,
    _scale,
    _tril_mask,
    _unchunk,
    _upcast,
    _use_fla,
    recurrence,
)


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


def naive_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """:func:`delta_rule` one position at a time."""
    return recurrence(q, k, v, scale=scale, beta=beta)


def naive_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, log_decay: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`gated_delta_rule` one position at a time."""
    return recurrence(q, k, v, scale=scale, beta=beta, decay=lambda t: log_decay[:, :, t].exp()[..., None, None])
