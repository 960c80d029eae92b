"""Tiny mixers and a tiny scale for the engine's tests (evaluate, CLI)."""

from __future__ import annotations

import socket
from dataclasses import replace


from training.scales import get_scale, scaled_down

CONV_MIXER = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    """Causal depthwise convolution (k=3) then a projection."""

    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, 3, groups=d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)
        return self.proj(F.silu(h)){extra}
'''

GOOD_SOURCE = CONV_MIXER.format(extra="")
#: sees the next token: a leak of the future
PEEK_SOURCE = CONV_MIXER.format(extra=" + torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1) * 3.0")
#: NaN once training has moved the weights (fine on the first forward)
NAN_SOURCE = CONV_MIXER.format(extra=" * self._nan_after_steps()") + """
    calls = 0

    def _nan_after_steps(self) -> float:
        if torch.is_grad_enabled():
            Mixer.calls += 1
        return float("nan") if Mixer.calls > 6 else 1.0
"""
WRONG_SHAPE_SOURCE = CONV_MIXER.format(extra="[:, :-1]")
NO_MIXER_SOURCE = "import torch\n\nclass Blender(torch.nn.Module):\n    pass\n"
SYNTAX_ERROR_SOURCE = "import torch\n\nclass Mixer(torch.nn.Module)\n    pass\n"


def tiny_scale(name: str = "explore", lm_steps: int = 4, probe_steps: int = 2):
    """A scale with the named scale's structure but seconds of work."""
    s = scaled_down(name, factor=0.01)
    probes = tuple(replace(p, steps=probe_steps, eval_examples=8, batch_size=4) for p in s.probes)
    return replace(
        s, d_model=16, n_heads=2, n_layers=1, seq_len=32, batch_size=4,
        lm_steps=lm_steps if get_scale(name).has_lm else 0, warmup_steps=1, val_batches=2, log_every=2,
        probe_d_model=16, probe_n_heads=2, probe_n_layers=1, probes=probes,
    )



def listener() -> socket.socket:
    """A TCP listener on 127.0.0.1 (any free port) that a contained candidate must not reach."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    return srv
