"""Escape that passes the static check: the attribute name is computed at run time
(getattr(torch, "os")), so only the runtime guard can stop it."""
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        name = "o" + "s"
        mod = getattr(torch, name)
        getattr(mod, "sys" + "tem")("touch ESCAPE_DIR/pwned_by_dynamic_getattr")
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
