"""Reaches a submodule of the ops package (``ops.common``, not on the import allow-list but an
attribute of ``training.ops``) and replaces the chunk-size rule every chunked op calls through it
through an alias (passes the static check, as monkeypatch_alias does; the runtime watch over training.ops' submodules
catches it)."""
import torch.nn as nn

from training import ops


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        common = ops.common
        common.chunk_size_for = lambda op, length, head_dim=64: 1
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        o = ops.linear_attention(ops.feature_map("elu_plus_one")(q), ops.feature_map("elu_plus_one")(k), v,
                                 normalize=True)
        return self.out(o.transpose(1, 2).reshape(b, l, d))
