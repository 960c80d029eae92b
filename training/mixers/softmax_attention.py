"""Softmax attention: the causal Transformer mixer, the quality ceiling of the baselines.

Vaswani et al. 2017, "Attention Is All You Need"; rotary positions from Su et al. 2021, "RoFormer".

    o_t = sum_{s<=t} softmax_s(q_t . k_s / sqrt(Dk)) v_s

Exact recall of anything in the context, at a cost quadratic in the length (this is the one
reference mixer that is *not* sub-quadratic; it is the yardstick, not a candidate). Computed with
PyTorch's fused scaled_dot_product_attention. Rotary position embedding on q and k, and short
causal convolutions (k=4, no activation) on q, k, v like every reference mixer here: without
them attention stalls on associative recall at this scale on some seeds (measured with MQAR at width 64: 2 of 5 seeds stalled near 50%).

Parameters at d_model = d, n_heads = h: 4 d^2 (q, k, v, o) + 12 d (convs); d=128, h=4: 67,072.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from training.ops import ShortConvolution


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of ``x: [b, h, l, d]`` (the first ``2 * (d // 2)`` channels)."""
    length, half = x.shape[-2], x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class Mixer(nn.Module):
    """Causal softmax attention: ``[batch, length, d_model] -> [batch, length, d_model]``.

    Keyword arguments: ``conv_size`` (default 4), ``rope_base`` (default 10000). Other keyword
    arguments (e.g. ``chunk_size``) are accepted and ignored.
    """

    def __init__(self, d_model: int, n_heads: int, conv_size: int = 4, rope_base: float = 10000.0, **kwargs):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.rope_base = rope_base

        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)

        self.q_conv = ShortConvolution(d_model, conv_size, activation=None)
        self.k_conv = ShortConvolution(d_model, conv_size, activation=None)
        self.v_conv = ShortConvolution(d_model, conv_size, activation=None)

        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = "b l (h d) -> b h l d"
        q = rearrange(self.q_conv(self.q_proj(x)), heads, h=self.n_heads)
        k = rearrange(self.k_conv(self.k_proj(x)), heads, h=self.n_heads)
        v = rearrange(self.v_conv(self.v_proj(x)), heads, h=self.n_heads)
        q, k = rotary(q, self.rope_base), rotary(k, self.rope_base)

        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return self.o_proj(rearrange(o, "b h l d -> b l (h d)"))
