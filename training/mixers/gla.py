"""GLA: gated linear attention with a data-dependent, per-channel forgetting gate.

Yang, Wang, Shen, Panda & Kim 2024, "Gated Linear Attention Transformers with Hardware-Efficient
Training".

Each head's [Dk, Dv] state decays row by row (one rate per key channel) before the write:

    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,     o_t = S_t^T q_t / sqrt(Dk)

with log alpha_t = logsigmoid(W2 W1 x_t + b) / 16: a low-rank (rank 16) gate, divided by the
paper's normaliser 16 so that the decays start close to 1 (long memory). Layer as in
fla.layers.GatedLinearAttention (expand_k = 0.5, expand_v = 1), plus the short causal
convolutions (k=4, SiLU) on q, k, v that every reference mixer here gets; the output is
RMSNorm-ed per head and gated by silu(W_g x) ("swish gate"), then projected.

Parameters at d_model = d, n_heads = h (defaults): 4 d^2 (q, k at d/2; v, gate, o at d)
+ 16 d + 16 d/2 + d/2 (low-rank gate) + 8 d (convs) + d / h (norm); d=128, h=4: 69,728.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from training.ops import GatedRMSNorm, ShortConvolution, gated_linear_attention


class Mixer(nn.Module):
    """GLA token mixer: ``[batch, length, d_model] -> [batch, length, d_model]``.

    Keyword arguments: ``expand_k`` (default 0.5), ``expand_v`` (default 1), ``gate_low_rank_dim``
    (default 16), ``gate_logit_normalizer`` (default 16), ``conv_size`` (default 4), ``chunk_size``
    (default None: tuned per head dim, ``training.ops.chunk_size_for``). Other keyword arguments are
    accepted and ignored.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        conv_size: int = 4,
        chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.chunk_size = chunk_size
        self.gate_logit_normalizer = gate_logit_normalizer
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if key_dim % n_heads or value_dim % n_heads:
            raise ValueError(f"key width {key_dim} and value width {value_dim} must be divisible by n_heads={n_heads}")

        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)  # output gate
        self.gk_proj = nn.Sequential(  # low-rank forgetting gate, one rate per key channel
            nn.Linear(d_model, gate_low_rank_dim, bias=False),
            nn.Linear(gate_low_rank_dim, key_dim, bias=True),
        )

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
        log_alpha = F.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer  # <= 0
        log_alpha = rearrange(log_alpha, heads, h=self.n_heads)

        o = gated_linear_attention(q, k, v, log_alpha, chunk_size=self.chunk_size)

        gate = rearrange(self.g_proj(x), "b l (h d) -> b l h d", h=self.n_heads)
        o = self.o_norm(rearrange(o, "b h l d -> b l h d"), gate)
        return self.o_proj(rearrange(o, "b l h d -> b l (h d)"))
