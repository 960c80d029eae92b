"""Returns a tensor subclass that could lie to the checks through __torch_function__."""
import torch
import torch.nn as nn


class Liar(torch.Tensor):
    pass


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x).as_subclass(Liar)
