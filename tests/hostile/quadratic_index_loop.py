"""A hidden quadratic: the same recurrence as valid_recurrent_unbind.py, but indexing a[:, t] in
the loop. Each select's backward allocates a zero tensor of the full [B, L, D] size, so backward
costs O(L^2) although the forward looks linear; only measurement finds this."""
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.inp = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x):
        a, b = self.inp(x).chunk(2, dim=-1)
        a = torch.sigmoid(a)
        h = torch.zeros_like(x[:, 0])
        outs = []
        for t in range(x.shape[1]):
            h = a[:, t] * h + (1 - a[:, t]) * b[:, t]
            outs.append(h)
        return self.out(torch.stack(outs, 1))
