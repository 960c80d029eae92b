"""Fails only at an odd length (the checker's unscored L=77): the failure must name the
configuration (length, batch, mode, grad) so that a Debugger can repair it."""
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.proj(x)
        n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        if x.shape[1] % 2 == 1:
            return v.reshape(x.shape[0], 2, -1, x.shape[2]).mean(1)  # cannot split an odd length
        return v.cumsum(1) / n
