"""Returns twice the model width."""
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, 2 * d_model)

    def forward(self, x):
        return self.proj(x)
