"""A memory bomb: asks for 1 GiB tensors until allocation fails."""
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        hoard = []
        for _ in range(10000):
            hoard.append(torch.empty(1 << 28))
            hoard[-1][::4096] = 1.0  # touch a little of each
        return self.proj(x)
