"""Escape: getattr tricks on builtins to reach open()."""
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        opener = getattr(__builtins__, "open")
        opener("ESCAPE_DIR/pwned_by_getattr", "w").write("x")
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
