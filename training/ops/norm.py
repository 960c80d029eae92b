"""Norms (RMSNorm, gated RMSNorm, L2) and the elementwise feature maps of linear attention."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.ops.common import _upcast


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight`` (fp16/bf16 upcast to fp32)."""
    xf = _upcast(x)
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else y * weight


def gated_rms_norm(
    x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """``rms_norm(x, weight) * silu(gate)`` (fla's FusedRMSNormGated, the swish output gate)."""
    return rms_norm(x, weight, eps) * F.silu(gate)


def l2_norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` along ``dim`` (fla's l2norm)."""
    xf = _upcast(x)
    return (xf * torch.rsqrt(xf.pow(2).sum(dim, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain (initialised to 1)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x) * silu(gate)`` with a learnable gain (initialised to 1)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(x, gate, self.weight, self.eps)


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def _softmax_head(x: torch.Tensor) -> torch.Tensor:
    return x.softmax(-1)


def _squared_relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).pow(2)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": _identity,
    "elu_plus_one": _elu_plus_one,
    "relu": F.relu,
    "silu": F.silu,
    "softmax_head": _softmax_head,  # softmax over the head dim (Hedgehog-style, positive)
    "squared_relu": _squared_relu,
}


def feature_map(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise feature map called ``name`` (one of :data:`FEATURE_MAPS`)."""
    try:
        return FEATURE_MAPS[name]
    except KeyError:
        raise ValueError(f"unknown feature map {name!r}; choose one of {', '.join(FEATURE_MAPS)}") from None
