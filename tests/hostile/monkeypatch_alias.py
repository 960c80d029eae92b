"""Hides NaNs by replacing torch.isfinite through an alias (passes the static check; the
runtime watch catches it)."""
import torch
import torch.nn as nn

t = torch


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        t.isfinite = lambda v: t.ones_like(v, dtype=t.bool)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x) * float("nan")
