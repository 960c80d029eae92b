"""Causal but quadratic: explicit masked softmax attention with an L x L score matrix."""
import math

import torch
import torch.nn as nn
from einops import rearrange


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.h = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (t h d) -> t b h l d", t=3, h=self.h)
        L = x.shape[1]
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mask = torch.ones(L, L, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
        o = s.softmax(-1) @ v
        return self.o(rearrange(o, "b h l d -> b l (h d)"))
