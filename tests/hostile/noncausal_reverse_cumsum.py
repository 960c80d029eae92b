"""Non-causal: a reversed cumulative sum (position t sums tokens t..L-1)."""
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.proj(x)
        return v.flip(1).cumsum(1).flip(1) / x.shape[1]
