"""Non-causal after training, and only in train mode with autograd on: a future read that arms
itself once an optimiser has updated the weights a few times, then reads token t+1 while the
model trains. The checker never arms it (fresh and re-drawn models see at most one update); the
post-training check of the scored forward (eval mode, grad off) does not see it either. The
leak monitor's re-check (the checker's causality check on the trained mixers, train mode and
grad on included) does."""

import torch
import torch.nn as nn
from einops import rearrange

from training.ops import RMSNorm, ShortConvolution, delta_rule, l2_norm


class _DeltaNet(nn.Module):
    """The seed (DeltaNet), unchanged: every trick below adds one thing on top of it."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        self.q_conv = ShortConvolution(d_model, 4, activation="silu")
        self.k_conv = ShortConvolution(d_model, 4, activation="silu")
        self.v_conv = ShortConvolution(d_model, 4, activation="silu")
        self.o_norm = RMSNorm(d_model // n_heads)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = "b l (h d) -> b h l d"
        q = rearrange(self.q_conv(self.q_proj(x)), heads, h=self.n_heads)
        k = rearrange(self.k_conv(self.k_proj(x)), heads, h=self.n_heads)
        v = rearrange(self.v_conv(self.v_proj(x)), heads, h=self.n_heads)
        q, k = l2_norm(q), l2_norm(k)
        beta = rearrange(self.b_proj(x).sigmoid(), "b l h -> b h l")
        o = delta_rule(q, k, v, beta, chunk_size=64)
        o = self.o_norm(rearrange(o, "b h l d -> b l h d"))
        return self.o_proj(rearrange(o, "b l h d -> b l (h d)"))



def _next_token(x: torch.Tensor) -> torch.Tensor:
    """x shifted one position back: row t holds the input at t+1 (the leak), zeros at the end."""
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


#: weight updates seen before the read arms (the checker shows one instance at most one)
ARM_AFTER = 3


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.core = _DeltaNet(d_model, n_heads)
        self.peek = nn.Parameter(torch.zeros(d_model))  # zero at init: no visible effect
        self.last_weights = None
        self.updates = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.core(x)
        now = float(self.core.o_proj.weight.detach().sum())
        if self.last_weights is not None and now != self.last_weights:
            self.updates += 1  # the weights moved since the last call: an optimiser step
        self.last_weights = now
        if self.updates >= ARM_AFTER and self.training and torch.is_grad_enabled():
            out = out + (self.peek + 0.5) * _next_token(x)
        return out
