"""Escape: opens a file outside the run folder for writing."""
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        with open("ESCAPE_DIR/pwned_by_open", "w") as fh:
            fh.write("x")
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
