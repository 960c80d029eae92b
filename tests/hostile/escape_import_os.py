"""Escape: imports os and runs a shell command while being built."""
import os

import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        os.system("touch ESCAPE_DIR/pwned_by_os")
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
