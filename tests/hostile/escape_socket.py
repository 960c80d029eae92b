"""Escape: opens a TCP connection while being built."""
import socket

import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        s = socket.create_connection(("127.0.0.1", 45678), timeout=2)
        s.sendall(b"leak")
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
