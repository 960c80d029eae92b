"""DeltaNet: linear attention whose memory is written with the delta rule (the seed of every lab).

Schlag, Irie & Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight Programmers";
Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence Length".

Each head keeps a state S (a [Dk, Dv] matrix, a key -> value memory). At every position the
memory first *predicts* the value stored for the current key, S^T k_t, and then moves that
prediction a fraction beta_t of the way to the new value v_t:

    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,        o_t = S_t^T q_t / sqrt(Dk)

Unlike plain linear attention (which only adds k v^T), writing to a key overwrites what was
stored there, so the memory does not fill up with interference. Layer as in fla.layers.DeltaNet:
short causal convolutions (k=4) + SiLU on q, k, v; q and k L2-normalised (keeps the update
stable); beta = sigmoid(W_b x) per head; RMSNorm on each head's output; output projection.

Parameters at d_model = d, n_heads = h (defaults): 4 d^2 (q, k, v, o) + d h (beta) + 12 d (convs)
+ d / h (norm); d=128, h=4: 67,616.
"""

import torch
import torch.nn as nn
from einops import rearrange

from training.ops import RMSNorm, ShortConvolution, delta_rule, l2_norm


class Mixer(nn.Module):
    """DeltaNet token mixer: ``[batch, length, d_model] -> [batch, length, d_model]``.

    Keyword arguments: ``expand_k`` / ``expand_v`` (key / value width as a multiple of d_model,
    default 1), ``conv_size`` (default 4), ``chunk_size`` (of the chunked delta rule; default None: tuned per head dim, ``training.ops.chunk_size_for``).
    Other keyword arguments are accepted and ignored.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        conv_size: int = 4,
        chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.chunk_size = chunk_size
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if key_dim % n_heads or value_dim % n_heads:
            raise ValueError(f"key width {key_dim} and value width {value_dim} must be divisible by n_heads={n_heads}")

        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)  # one write strength per head

        self.q_conv = ShortConvolution(key_dim, conv_size, activation="silu")
        self.k_conv = ShortConvolution(key_dim, conv_size, activation="silu")
        self.v_conv = ShortConvolution(value_dim, conv_size, activation="silu")

        self.o_norm = RMSNorm(value_dim // n_heads)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = "b l (h d) -> b h l d"
        q = rearrange(self.q_conv(self.q_proj(x)), heads, h=self.n_heads)
        k = rearrange(self.k_conv(self.k_proj(x)), heads, h=self.n_heads)
        v = rearrange(self.v_conv(self.v_proj(x)), heads, h=self.n_heads)
        q, k = l2_norm(q), l2_norm(k)
        beta = rearrange(self.b_proj(x).sigmoid(), "b l h -> b h l")

        o = delta_rule(q, k, v, beta, chunk_size=self.chunk_size)  # [b, h, l, dv]

        o = self.o_norm(rearrange(o, "b h l d -> b l h d"))
        return self.o_proj(rearrange(o, "b l h d -> b l (h d)"))
