"""Linear attention: attention with the softmax replaced by a positive feature map.

Katharopoulos, Vyas, Pappas & Fleuret 2020, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention".

With phi(x) = elu(x) + 1 each head keeps a running sum of outer products, a [Dk, Dv] state that
only ever grows:

    S_t = S_{t-1} + phi(k_t) v_t^T,     o_t = S_t^T phi(q_t) / sqrt(Dk)

Instead of the paper's normaliser (division by phi(q_t) . sum phi(k_s)), the output of each head
is RMSNorm-ed, which is more stable in training (fla.layers.LinearAttention's default output norm).
Short causal convolutions (k=4) on q, k, v, as for every reference mixer here.

Parameters at d_model = d, n_heads = h (defaults): 4 d^2 (q, k, v, o) + 12 d (convs) + d / h
(norm); d=128, h=4: 67,104.
"""

import torch
import torch.nn as nn
from einops import rearrange

from training.ops import RMSNorm, ShortConvolution, linear_attention
from training.ops import feature_map as get_feature_map


class Mixer(nn.Module):
    """Linear-attention token mixer: ``[batch, length, d_model] -> [batch, length, d_model]``.

    Keyword arguments: ``feature_map`` (a name from ``training.ops.FEATURE_MAPS``, default
    ``"elu_plus_one"``), ``expand_k`` / ``expand_v`` (default 1), ``conv_size`` (default 4),
    ``chunk_size`` (default None: tuned per head dim, ``training.ops.chunk_size_for``). Other keyword arguments are accepted and ignored.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        feature_map: str = "elu_plus_one",
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        conv_size: int = 4,
        chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.chunk_size = chunk_size
        self.phi = get_feature_map(feature_map)
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if key_dim % n_heads or value_dim % n_heads:
            raise ValueError(f"key width {key_dim} and value width {value_dim} must be divisible by n_heads={n_heads}")

        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)

        self.q_conv = ShortConvolution(key_dim, conv_size, activation=None)
        self.k_conv = ShortConvolution(key_dim, conv_size, activation=None)
        self.v_conv = ShortConvolution(value_dim, conv_size, activation=None)

        self.o_norm = RMSNorm(value_dim // n_heads)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = "b l (h d) -> b h l d"
        q = rearrange(self.q_conv(self.q_proj(x)), heads, h=self.n_heads)
        k = rearrange(self.k_conv(self.k_proj(x)), heads, h=self.n_heads)
        v = rearrange(self.v_conv(self.v_proj(x)), heads, h=self.n_heads)

        o = linear_attention(self.phi(q), self.phi(k), v, chunk_size=self.chunk_size)

        o = self.o_norm(rearrange(o, "b h l d -> b l h d"))
        return self.o_proj(rearrange(o, "b l h d -> b l (h d)"))

