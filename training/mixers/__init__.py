"""The six reference mixers: standalone files obeying the mixer contract (docs/ARCHITECTURE.md).

Each file defines ``class Mixer(nn.Module)`` with ``__init__(self, d_model, n_heads, **kwargs)`` and
``forward(x: [batch, length, d_model]) -> same shape``, imports only torch, einops and
``training.ops``, and gives q, k, v a short causal convolution (k=4). They are shown to users and
are what researchers mutate; ``deltanet`` is the seed of every lab.

Parameter counts at d_model=128, n_heads=4 with default keyword arguments (all about 4 d^2 = 65,536
plus small terms; tests/test_mixers.py keeps them within 10% of each other):

======================  =======
softmax_attention        67,072
linear_attention         67,104
retnet                   66,592
gla                      69,728
deltanet                 67,616
gated_deltanet           67,624
======================  =======
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch.nn as nn

_HERE = Path(__file__).resolve().parent

REFERENCE_MIXERS: dict[str, Path] = {
    name: _HERE / f"{name}.py"
    for name in ("softmax_attention", "linear_attention", "retnet", "gla", "deltanet", "gated_deltanet")
}
"""Name -> source file of each reference mixer."""

SEED_MIXER = "deltanet"
"""The mixer every new lab starts from."""


def _check_name(name: str) -> None:
    if name not in REFERENCE_MIXERS:
        raise KeyError(f"unknown reference mixer {name!r}; choose one of {', '.join(REFERENCE_MIXERS)}")


def reference_source(name: str) -> str:
    """The source code of reference mixer ``name`` (a key of :data:`REFERENCE_MIXERS`)."""
    _check_name(name)
    return REFERENCE_MIXERS[name].read_text(encoding="utf-8")


def reference_mixer_class(name: str) -> type[nn.Module]:
    """The ``Mixer`` class of reference mixer ``name``, imported as ``training.mixers.<name>``."""
    _check_name(name)
    return importlib.import_module(f"{__name__}.{name}").Mixer
