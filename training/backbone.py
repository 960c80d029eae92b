"""The fixed backbone every mixer is trained in (docs/ARCHITECTURE.md, "The mixer contract").

    tokens -> embedding -> N x [ x + Mixer(RMSNorm(x)); x + SwiGLU(RMSNorm(x)) ] -> RMSNorm -> tied LM head

Only the mixer varies between experiments, so differences in loss are the mixer's. Initialisation
follows GPT-2 / fla with the standard deviation scaled to the width: every ``nn.Linear`` and
``nn.Embedding`` (the mixer's included) is drawn from N(0, 1/d_model) with zero biases, and the
projections that write into the residual stream (the MLP's ``down_proj`` and any mixer submodule
named ``o_proj`` or ``out_proj``) are further divided by sqrt(2 * n_layers). GPT-2 and fla use a
fixed 0.02, which is 1/sqrt(d_model) at the widths they are used at (d = 2048: 0.022); at the
widths asiarch trains (64 for the probe models, 128 at explore) a fixed 0.02 is 4-6x smaller than
that, and a multiplicative gate (``silu(W_g x)``, the output gates of GLA, RetNet and Gated
DeltaNet) then starts near zero and scales the mixer's output and gradients down with it, a
handicap of small width, not of the design (docs/NOISE.md, "Proxy validity": with 0.02 the gated
mixers fell to the bottom of the probe ranking). Parameters that are not in a Linear/Embedding (decay parameters, convolution
taps, norm gains) keep the mixer's own initialisation; a mixer module with ``_no_reinit = True``
(on itself or a submodule) keeps its own initialisation entirely.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.ops import RMSNorm

__all__ = ["LanguageModel", "Block", "SwiGLU", "count_parameters", "swiglu_hidden_size"]

_RESIDUAL_OUT_NAMES = ("o_proj", "out_proj")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module``; tied (shared) tensors are counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def swiglu_hidden_size(d_model: int, mlp_ratio: float = 4.0, multiple_of: int = 8) -> int:
    """Hidden width of the SwiGLU MLP: ``2/3 * mlp_ratio * d_model`` rounded up to ``multiple_of``
    (so it has the parameter count of a plain ``mlp_ratio`` MLP, as in LLaMA / fla)."""
    hidden = int(2 * mlp_ratio * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``: the channel mixer of every block."""

    def __init__(self, d_model: int, hidden_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden_size, bias=False)
        self.up_proj = nn.Linear(d_model, hidden_size, bias=False)
        self.down_proj = nn.Linear(hidden_size, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, mixer: nn.Module, d_model: int, mlp_hidden: int):
        super().__init__()
        self.mixer_norm = RMSNorm(d_model)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class LanguageModel(nn.Module):
    """A causal language model around a mixer class.

    Args:
        mixer_cls: the ``Mixer`` class of a candidate file (``mixer_cls(d_model, n_heads, **kwargs)``).
        vocab_size: number of token ids (256 for bytes).
        d_model: residual width.
        n_layers: number of blocks.
        n_heads: passed to the mixer.
        mixer_kwargs: extra keyword arguments for every mixer.
        mlp_ratio: SwiGLU size, see :func:`swiglu_hidden_size`.
        init_std: standard deviation of the Linear / Embedding initialisation (default
            ``1 / sqrt(d_model)``).

    ``forward(tokens: LongTensor [B, L]) -> logits [B, L, vocab_size]``.
    """

    def __init__(
        self,
        mixer_cls: type[nn.Module],
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        mixer_kwargs: dict[str, Any] | None = None,
        mlp_ratio: float = 4.0,
        init_std: float | None = None,
    ):
        super().__init__()
        self.vocab_size, self.d_model, self.n_layers, self.n_heads = vocab_size, d_model, n_layers, n_heads
        self.init_std = float(init_std) if init_std is not None else 1.0 / math.sqrt(d_model)
        kwargs = dict(mixer_kwargs or {})
        hidden = swiglu_hidden_size(d_model, mlp_ratio)
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(mixer_cls(d_model, n_heads, **kwargs), d_model, hidden) for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied input / output embedding
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 / fla initialisation at std ``init_std`` (see the module docstring)."""
        keep = set()
        for module in self.modules():
            if getattr(module, "_no_reinit", False):
                keep.update(id(m) for m in module.modules())
        for module in self.modules():
            if id(module) in keep:
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.init_std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        residual_scale = 1.0 / math.sqrt(2 * self.n_layers)
        for block in self.layers:
            block.mlp.down_proj.weight.mul_(residual_scale)
            for name, module in block.mixer.named_modules():
                if name.split(".")[-1] in _RESIDUAL_OUT_NAMES and isinstance(module, nn.Linear):
                    if id(module) not in keep:
                        module.weight.mul_(residual_scale)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"expected integer tokens of shape [batch, length], got {tuple(tokens.shape)} {tokens.dtype}")
        x = self.embed(tokens)
        for block in self.layers:
            x = block(x)
        return self.lm_head(self.norm(x))

    def mixer_parameters(self) -> int:
        """Parameters in the mixers of all layers (the part a candidate changes)."""
        return sum(count_parameters(block.mixer) for block in self.layers)
