"""Gated DeltaNet: the delta rule plus a Mamba-2 style data-dependent forgetting gate.

Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule".

Each head's [Dk, Dv] memory decays by alpha_t in (0, 1) before the delta-rule write:

    S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T,    o_t = S_t^T q_t / sqrt(Dk)

alpha_t = exp(-A * softplus(W_a x_t + dt_bias)) (per head, as in Mamba-2) lets the layer clear its
memory quickly when the context changes; the delta rule lets it edit single associations. Layer as
in fla.layers.GatedDeltaNet: short convolutions (k=4) + SiLU on q, k, v; L2-normalised q, k;
beta = sigmoid(W_b x); output RMSNorm per head gated by silu(W_g x); output projection. To keep the
parameter count at about 4 d^2 the key width is d/2 (expand_k = 0.5, as in GLA), so the state per
head is half DeltaNet's at the defaults; pass expand_k=1 for equal state (5 d^2 parameters).

Parameters at d_model = d, n_heads = h (defaults): 4 d^2 (q, k at d/2; v, gate, o at d)
+ 2 d h (a, beta) + 2 h (A_log, dt_bias) + 8 d (convs) + d / h (norm); d=128, h=4: 67,624.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from training.ops import GatedRMSNorm, ShortConvolution, gated_delta_rule, l2_norm


class Mixer(nn.Module):
    """Gated DeltaNet token mixer: ``[batch, length, d_model] -> [batch, length, d_model]``.

    Keyword arguments: ``expand_k`` (default 0.5), ``expand_v`` (default 1), ``conv_size``
    (default 4), ``chunk_size`` (default None: tuned per head dim, ``training.ops.chunk_size_for``). Other keyword arguments are accepted and ignored.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        conv_size: int = 4,
        chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.chunk_size = chunk_size
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if key_dim % n_heads or value_dim % n_heads:
            raise ValueError(f"key width {key_dim} and value width {value_dim} must be divisible by n_heads={n_heads}")

        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)  # forgetting gate input
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)  # write strength
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)  # output gate

        # Mamba-2 decay parameters: A in [1, 16], time step dt log-uniform in [1e-3, 0.1]
        self.A_log = nn.Parameter(torch.empty(n_heads).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(n_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True

        self.q_conv = ShortConvolution(key_dim, conv_size, activation="silu")
        self.k_conv = ShortConvolution(key_dim, conv_size, activation="silu")
        self.v_conv = ShortConvolution(value_dim, conv_size, activation="silu")

        self.o_norm = GatedRMSNorm(value_dim // n_heads)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = "b l (h d) -> b h l d"
        q = rearrange(self.q_conv(self.q_proj(x)), heads, h=self.n_heads)
        k = rearrange(self.k_conv(self.k_proj(x)), heads, h=self.n_heads)
        v = rearrange(self.v_conv(self.v_proj(x)), heads, h=self.n_heads)
        q, k = l2_norm(q), l2_norm(k)
        beta = rearrange(self.b_proj(x).sigmoid(), "b l h -> b h l")
        log_alpha = -self.A_log.exp() * F.softplus(self.a_proj(x) + self.dt_bias)  # [b, l, h], <= 0
        log_alpha = rearrange(log_alpha, "b l h -> b h l")

        o = gated_delta_rule(q, k, v, beta, log_alpha, chunk_size=self.chunk_size)

        gate = rearrange(self.g_proj(x), "b l (h d) -> b l h d", h=self.n_heads)
        o = self.o_norm(rearrange(o, "b h l d -> b l h d"), gate)
        return self.o_proj(rearrange(o, "b l h d -> b l (h d)"))
