"""Breaks the contract: Mixer is not an nn.Module and __init__ takes no n_heads."""
import torch


class Mixer:
    def __init__(self, d_model):
        self.w = torch.zeros(d_model)

    def forward(self, x):
        return x
