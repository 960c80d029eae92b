"""Non-causal: every position sees the mean over the whole sequence."""
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.proj(x)
        return v + v.mean(dim=1, keepdim=True)
