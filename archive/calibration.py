"""Calibration set for the novelty threshold: motivations of token-mixer ideas, each written
three ways (paraphrases of one idea), and a function that measures how the embedder separates
paraphrases from different ideas. The default ``[loop] novelty_threshold`` was chosen from
these measurements (``benchmarks/archive_scale.py`` prints them); the novelty tests use them.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

#: Each inner list: one idea, said three different ways.
IDEAS: list[list[str]] = [
    [
        "Replace the additive state update with the delta rule so the memory can overwrite stale key-value associations instead of accumulating them.",
        "Use a delta-rule update: write only the error between the new value and what the state already returns for that key, so old associations get overwritten.",
        "The state should correct itself: subtract the current prediction for the key before writing the value (delta rule), rather than adding outer products forever.",
    ],
    [
        "Add a data-dependent forget gate that decays the recurrent state per channel, letting the model drop irrelevant history.",
        "Gate the memory with a learned, input-conditioned decay on each channel so that outdated context fades away.",
        "Let every token decide how much of the old state to keep: a per-channel sigmoid forget gate computed from the input multiplies the state.",
    ],
    [
        "Insert a short causal depthwise convolution before the query and key projections to capture local n-gram patterns cheaply.",
        "Run q and k through a small causal depthwise conv (kernel 4) first, so nearby-token structure is modelled before the linear attention.",
        "Local context matters: a tiny causal convolution over the last few tokens on the queries and keys gives the mixer n-gram features.",
    ],
    [
        "Use multiple heads with smaller key dimension but a larger value dimension, increasing state capacity at the same parameter count.",
        "Rebalance the head layout: shrink the keys and widen the values per head, which enlarges the recurrent state without adding parameters.",
        "Trade key width for value width in each head so the memory matrix holds more while the parameter budget stays fixed.",
    ],
    [
        "Apply an elu+1 feature map to queries and keys so linear attention weights stay positive and the normaliser is stable.",
        "Make the kernel features positive with elu(x)+1 on q and k, which keeps the linear-attention denominator well behaved.",
        "Positive feature maps (elu plus one) for queries and keys avoid negative attention scores and an unstable normalisation term.",
    ],
    [
        "Mix a sliding-window softmax attention over the last 64 tokens with the linear recurrent state for exact local recall.",
        "Combine exact softmax attention inside a local window of 64 tokens with a linear-attention memory for the long range.",
        "Hybrid mixer: windowed softmax attention handles the recent 64 tokens precisely while a recurrent linear state covers the rest.",
    ],
    [
        "Normalise the mixer output with a gated RMSNorm whose gate comes from the input, stabilising training of the recurrent layer.",
        "Put an output gate on the mixer: RMS-normalise the heads' output and multiply by a SiLU gate computed from the input.",
        "Stabilise the recurrent block by passing its output through RMSNorm and an input-dependent SiLU gating before the projection.",
    ],
    [
        "Use fixed per-head exponential decays with different rates, as in RetNet, so heads specialise in different time scales.",
        "Give each head its own constant decay factor gamma, spread over several time scales, like retention in RetNet.",
        "Multi-scale retention: every head forgets at a fixed but different exponential rate so some keep long and some short memory.",
    ],
]

#: Light rewordings of a motivation (what a researcher resubmitting the same idea produces).
REWORDINGS: list[tuple[str, str]] = [
    (IDEAS[0][0], "Swap the additive state update for the delta rule so that memory can overwrite outdated key-value associations rather than accumulate them."),
    (IDEAS[1][0], "Introduce an input-dependent forget gate which decays the recurrent state for each channel, so the model can discard irrelevant history."),
    (IDEAS[2][0], "Place a short causal depthwise convolution ahead of the query and key projections to cheaply capture local n-gram patterns."),
    (IDEAS[5][0], "Combine sliding-window softmax attention over the previous 64 tokens with the linear recurrent state to get exact local recall."),
    (IDEAS[7][0], "Use constant exponential decays per head with differing rates, like RetNet, so that heads specialise on different time scales."),
]

#: Ideas unrelated to each other and to the ones above (sanity floor for "unrelated").
UNRELATED: list[str] = [
    "Cache the tokenizer vocabulary on disk to make start-up faster.",
    "Plot the validation loss curve with a logarithmic x axis.",
    "The weather in the mountains was cold and windy all week.",
    "Schedule the learning rate with a cosine decay after a linear warm-up.",
]


def measure(embedder: Any) -> dict[str, Any]:
    """Cosine similarities of light rewordings, of paraphrase pairs (same idea, said another
    way) and of pairs of different ideas,
    with their min / max / mean and the gap between them."""
    texts = [t for idea in IDEAS for t in idea]
    owner = [i for i, idea in enumerate(IDEAS) for _ in idea]
    v = embedder.embed(texts)
    sims = v @ v.T
    para, diff = [], []
    for a, b in itertools.combinations(range(len(texts)), 2):
        (para if owner[a] == owner[b] else diff).append(float(sims[a, b]))
    rw = [float(a @ b) for a, b in zip(embedder.embed([p[0] for p in REWORDINGS]),
                                        embedder.embed([p[1] for p in REWORDINGS]))]
    u = embedder.embed(UNRELATED)
    unrelated = (u @ v.T).ravel().tolist()
    return {
        "rewording": {"min": min(rw), "mean": float(np.mean(rw)), "max": max(rw), "n": len(rw)},
        "paraphrase": {"min": min(para), "mean": float(np.mean(para)), "max": max(para), "n": len(para)},
        "different_idea": {"min": min(diff), "mean": float(np.mean(diff)), "max": max(diff), "n": len(diff),
                           "p95": float(np.percentile(diff, 95))},
        "unrelated": {"max": max(unrelated), "mean": float(np.mean(unrelated))},
        "paraphrase_sims": para,
        "different_sims": diff,
    }
