"""RetNet: multi-scale retention, linear attention with a fixed exponential decay per head.

Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models".

Head h forgets at its own fixed rate gamma_h = 1 - 2^(-5-h) (from 0.97 down to almost 1), so the
heads cover several time scales:

    S_t = gamma_h S_{t-1} + k_t v_t^T,     o_t = S_t^T q_t / sqrt(Dk)

Layer as in fla.layers.MultiScaleRetention: rotary position embedding on q and k (the xPos of
the paper without its extra scaling), the output RMSNorm-ed per head (the paper's GroupNorm) and
gated by swish(W_g x), then projected; plus short causal convolutions (k=4, SiLU) on q, k, v. The
key width is d/2 (expand_k = 0.5) to keep the parameter count near 4 d^2 with the gate.

Parameters at d_model = d, n_heads = h (defaults): 4 d^2 (q, k at d/2; v, gate, o at d)
+ 8 d (convs) + d / h (norm); d=128, h=4: 66,592.
"""

import torch
import torch.nn as nn
from einops import rearrange

from training.ops import GatedRMSNorm, ShortConvolution, retention


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of ``x: [b, h, l, d]`` (the first ``2 * (d // 2)`` channels)."""
    length, half = x.shape[-2], x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class Mixer(nn.Module):
    """RetNet token mixer: ``[batch, length, d_model] -> [batch, length, d_model]``.

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
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)  # output gate

        self.q_conv = ShortConvolution(key_dim, conv_size, activation="silu")
        self.k_conv = ShortConvolution(key_dim, conv_size, activation="silu")
        self.v_conv = ShortConvolution(value_dim, conv_size, activation="silu")

        # fixed multi-scale decays, one per head (a buffer: not trained)
        gamma = 1.0 - 2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float32))
        self.register_buffer("gamma", gamma, persistent=False)

        self.o_norm = GatedRMSNorm(value_dim // n_heads)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = "b l (h d) -> b h l d"
        q = rearrange(self.q_conv(self.q_proj(x)), heads, h=self.n_heads)
        k = rearrange(self.k_conv(self.k_proj(x)), heads, h=self.n_heads)
        v = rearrange(self.v_conv(self.v_proj(x)), heads, h=self.n_heads)
        q, k = rotary(q), rotary(k)

        o = retention(q, k, v, self.gamma, chunk_size=self.chunk_size)

        gate = rearrange(self.g_proj(x), "b l (h d) -> b l h d", h=self.n_heads)
        o = self.o_norm(rearrange(o, "b h l d -> b l h d"), gate)
        return self.o_proj(rearrange(o, "b l h d -> b l (h d)"))
