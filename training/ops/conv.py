"""The short causal depthwise convolution (fla's ShortConvolution) and its naive reference."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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



def naive_short_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = "silu"
) -> torch.Tensor:
    """:func:`short_conv` one position at a time: ``y_t = sum_i w[:, i] x_{t-K+1+i}`` (zeros before 0)."""
    d, kernel = weight.shape
    outs = []
    for t in range(x.shape[1]):
        y = x.new_zeros(x.shape[0], d) if bias is None else bias.expand(x.shape[0], d).clone()
        for i in range(kernel):
            src = t - kernel + 1 + i
            if src >= 0:
                y = y + weight[:, i] * x[:, src]
        outs.append(F.silu(y) if activation in ("silu", "swish") else y)
    return torch.stack(outs, dim=1)
