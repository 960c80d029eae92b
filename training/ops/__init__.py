"""Reference token-mixing ops: the building blocks candidate mixers may import.

Everything here is pure PyTorch and runs on the CPU. The recurrent ops are computed in *chunks*
(the "chunkwise parallel" form of Yang et al., GLA 2023 / DeltaNet 2024): inside a chunk of ``C``
positions the work is a few ``C x C`` matrix products, and a ``Dk x Dv`` state is carried from one
chunk to the next, so the cost is O(L * C) in the length ``L`` instead of the O(L^2) of attention
and without the Python loop over every position of a naive recurrence.

Layout (see docs/CONTRACTS.md, "training.ops"): ``q, k: [B, H, L, Dk]``, ``v: [B, H, L, Dv]``,
outputs ``[B, H, L, Dv]``. ``q`` is multiplied by ``scale`` inside an op; ``scale=None`` means
``Dk ** -0.5`` (as in flash-linear-attention, "fla"). Lengths that are not a multiple of the chunk
size are zero-padded at the end (which changes no earlier output: the ops are causal).

On CUDA, when ``fla`` imports, the chunked ops dispatch to fla's Triton kernels (fla uses
``[B, T, H, D]``; the transposes are done here). fla picks its own chunk size there.

Recurrences computed (``S`` is the ``[Dk, Dv]`` state, ``o_t = (scale * q_t) S_t``):

- linear attention:   S_t = S_{t-1} + k_t v_t^T
- retention:          S_t = gamma_h S_{t-1} + k_t v_t^T                 (fixed per-head decay)
- simple GLA:         S_t = exp(g_t) S_{t-1} + k_t v_t^T                (data-dependent, per head)
- GLA:                S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T          (data-dependent, per channel)
- delta rule:         S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T
- gated delta rule:   S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T, a_t = exp(g_t)

The package keeps one module per op family, each with its naive recurrent reference beside the
chunked op (as fla keeps ``naive.py`` next to each kernel); tests and benchmarks compare the two:

- :mod:`training.ops.common`: fla dispatch, chunk sizes, chunking helpers, :func:`recurrence`;
- :mod:`training.ops.linear` (linear attention), :mod:`training.ops.scalar_decay` (retention, simple GLA),
  :mod:`training.ops.gla`, :mod:`training.ops.delta` (delta rule, gated delta rule);
- :mod:`training.ops.conv` (short convolution), :mod:`training.ops.norm` (norms, feature maps).

Candidate mixers import from ``training.ops`` only (``from training import ops`` or ``from
training.ops import delta_rule``); the submodules are not on the import allow-list.
"""

from __future__ import annotations

from training.ops.common import CHUNK_OPS, MAX_CHUNK, MIN_CHUNK, chunk_size_for, fla_available, recurrence
from training.ops.conv import ShortConvolution, naive_short_conv, short_conv
from training.ops.delta import delta_rule, gated_delta_rule, naive_delta_rule, naive_gated_delta_rule
from training.ops.gla import gated_linear_attention, naive_gla
from training.ops.linear import linear_attention, naive_linear_attention
from training.ops.norm import (
    FEATURE_MAPS,
    GatedRMSNorm,
    RMSNorm,
    feature_map,
    gated_rms_norm,
    l2_norm,
    rms_norm,
)
from training.ops.scalar_decay import naive_retention, naive_simple_gla, retention, simple_gla

__all__ = [
    "linear_attention",
    "retention",
    "simple_gla",
    "gated_linear_attention",
    "delta_rule",
    "gated_delta_rule",
    "short_conv",
    "ShortConvolution",
    "rms_norm",
    "gated_rms_norm",
    "l2_norm",
    "RMSNorm",
    "GatedRMSNorm",
    "feature_map",
    "FEATURE_MAPS",
    "fla_available",
    "chunk_size_for",
    "CHUNK_OPS",
]

#: the naive recurrent reference of each chunked op (same signature minus ``chunk_size``)
NAIVE: dict[str, object] = {
    "linear_attention": naive_linear_attention,
    "retention": naive_retention,
    "simple_gla": naive_simple_gla,
    "gated_linear_attention": naive_gla,
    "delta_rule": naive_delta_rule,
    "gated_delta_rule": naive_gated_delta_rule,
    "short_conv": naive_short_conv,
}
