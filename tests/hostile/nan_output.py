"""Produces NaN outputs (log of a negative number)."""
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return torch.log(-self.proj(x).abs() - 1.0)
