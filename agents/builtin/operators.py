"""Mutation and crossover operators over :class:`~agents.builtin.genome.Genome`.

Every operator is tied to one cognition lever (the ``levers`` vocabulary of ``corpus.schema``), so
that the cognition entries retrieved for a parent's problem statement steer which operators the
built-in researcher tries, and the entry that suggested an operator can be cited in the motivation.
Operators always return a valid genome different from their input, or ``None`` when they cannot
apply to that genome.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from agents.builtin.genome import (
    FEATURE_MAPS,
    Genome,
    GenomeError,
)


@dataclass(frozen=True)
class Operator:
    """A named genome transformation.

    Attributes:
        name: stable identifier (recorded per experiment, used by the operator bandit).
        lever: the cognition lever it implements.
        summary: what it does, one line (quoted in motivations).
        fn: ``(genome, rng) -> (new genome, what changed) | None``.
    """

    name: str
    lever: str
    summary: str
    fn: Callable[[Genome, random.Random], tuple[Genome, str] | None]

    def apply(self, genome: Genome, rng: random.Random) -> tuple[Genome, str] | None:
        """Apply to ``genome``; ``None`` when not applicable or when the result is invalid/unchanged."""
        out = self.fn(genome, rng)
        if out is None:
            return None
        child, what = out
        try:
            child.validate()
        except GenomeError:
            return None
        return (child, what) if child != genome else None


def _pick(rng: random.Random, options, current):
    rest = [o for o in options if o != current]
    return rng.choice(rest) if rest else None


def _feature_map(g: Genome, rng: random.Random):
    new = _pick(rng, FEATURE_MAPS, g.feature_map)
    return g.with_(feature_map=new), f"feature map {g.feature_map} -> {new}"


def _delta_rule(g: Genome, rng: random.Random):
    if g.update == "additive":
        return g.with_(update="delta", qk_norm="l2", normalize=False), "additive update -> delta rule"
    if g.update in ("decayed", "gated"):
        decay = "softplus" if g.decay in ("fixed", "lowrank_logsigmoid") else g.decay
        return (
            g.with_(update="gated_delta", decay=decay, qk_norm="l2", normalize=False),
            f"{g.update} update -> gated delta rule",
        )
    if g.update in ("delta", "gated_delta"):
        new = "double" if g.beta_range == "unit" else "unit"
        return g.with_(beta_range=new), f"beta range {g.beta_range} -> {new}"
    return None


def _decay(g: Genome, rng: random.Random):
    if g.update == "additive":
        return g.with_(update="decayed", decay="fixed"), "additive update -> fixed multi-scale decay"
    if g.update == "delta":
        return g.with_(update="gated_delta", decay=rng.choice(["softplus", "sigmoid"])), "delta rule -> gated delta rule"
    if g.update == "gated_delta":
        new = "sigmoid" if g.decay == "softplus" else "softplus"
        return g.with_(decay=new), f"decay parameterisation {g.decay} -> {new}"
    if g.update == "gated":
        new = _pick(rng, ("lowrank_logsigmoid", "softplus", "sigmoid"), g.decay)
        return g.with_(decay=new), f"decay parameterisation {g.decay} -> {new}"
    return None


def _data_dependent_gate(g: Genome, rng: random.Random):
    if g.update == "decayed":
        return g.with_(update="gated", decay="lowrank_logsigmoid"), "fixed decay -> data-dependent per-channel gate"
    if g.update == "additive":
        return g.with_(update="gated", decay="lowrank_logsigmoid", normalize=False), "additive -> gated update"
    if g.update == "delta":
        return g.with_(update="gated_delta", decay="softplus"), "delta rule -> data-dependent gated delta rule"
    return _decay(g, rng)


def _short_conv(g: Genome, rng: random.Random):
    if rng.random() < 0.4:
        new = _pick(rng, (2, 3, 4, 6, 8), g.conv_size)
        return g.with_(conv_size=new), f"short conv kernel {g.conv_size} -> {new}"
    which = rng.choice(["conv_q", "conv_k", "conv_v"])
    on = not getattr(g, which)
    return g.with_(**{which: on}), f"{'add' if on else 'remove'} short conv on {which[-1]}"


def _output_gate(g: Genome, rng: random.Random):
    new = _pick(rng, ("none", "swish", "sigmoid"), g.output_gate)
    return g.with_(output_gate=new), f"output gate {g.output_gate} -> {new}"


def _normalization(g: Genome, rng: random.Random):
    if g.update in ("additive", "decayed", "gated") and rng.random() < 0.5:
        new = "none" if g.qk_norm == "l2" else "l2"
        return g.with_(qk_norm=new), f"q/k L2 normalisation {g.qk_norm} -> {new}"
    if g.update == "additive" and rng.random() < 0.5:
        return g.with_(normalize=not g.normalize), f"running normaliser {'on' if not g.normalize else 'off'}"
    new = "none" if g.output_norm == "rms" else "rms"
    return g.with_(output_norm=new), f"output norm {g.output_norm} -> {new}"


def _head_layout(g: Genome, rng: random.Random):
    new = _pick(rng, (0.5, 1.0, 2.0), g.heads_factor)
    return g.with_(heads_factor=new), f"heads x{g.heads_factor:g} -> x{new:g}"


def _state_expansion(g: Genome, rng: random.Random):
    if rng.random() < 0.5:
        new = _pick(rng, (0.5, 1.0, 2.0), g.expand_k)
        return g.with_(expand_k=new), f"key (state) expansion x{g.expand_k:g} -> x{new:g}"
    new = 2.0 if g.expand_v == 1.0 else 1.0
    return g.with_(expand_v=new), f"value expansion x{g.expand_v:g} -> x{new:g}"


#: All mutation operators, by name.
OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("feature_map", "feature_map", "swap the feature map on q/k", _feature_map),
        Operator("delta_rule", "delta_rule", "move to (or tune) an error-correcting delta-rule write", _delta_rule),
        Operator("decay", "decay", "add or re-parameterise a forgetting decay", _decay),
        Operator("data_dependent_gate", "data_dependent_gate", "make the forgetting input-dependent", _data_dependent_gate),
        Operator("short_conv", "short_conv", "change the short causal convolutions", _short_conv),
        Operator("output_gate", "output_gate", "change the output gate", _output_gate),
        Operator("normalization", "normalization", "change q/k or output normalisation", _normalization),
        Operator("head_layout", "head_layout", "change the number and size of heads", _head_layout),
        Operator("state_expansion", "state_expansion", "expand or shrink the key/value state", _state_expansion),
    )
}

#: Gene groups exchanged as units by crossover (genes that only make sense together).
GENE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("update", "decay", "beta_range", "qk_norm", "normalize"),
    ("feature_map",),
    ("conv_q", "conv_k", "conv_v", "conv_size"),
    ("output_gate",),
    ("output_norm",),
    ("heads_factor",),
    ("expand_k", "expand_v"),
)


def crossover(a: Genome, b: Genome, rng: random.Random) -> tuple[Genome, str] | None:
    """Uniform crossover over :data:`GENE_GROUPS`: each group from ``a`` or ``b``.

    Returns the child and a description of the groups taken from ``b``, or ``None`` if every
    draw produced ``a``, ``b`` or an invalid genome.
    """
    for _ in range(8):
        values = a.to_dict()
        taken = []
        for group in GENE_GROUPS:
            if rng.random() < 0.5 and any(getattr(a, k) != getattr(b, k) for k in group):
                for k in group:
                    values[k] = getattr(b, k)
                taken.append("/".join(group[:1]))
        try:
            child = Genome.from_dict(values)
        except GenomeError:
            continue
        if child not in (a, b):
            return child, "crossover taking " + ", ".join(taken) + " from the reference"
    return None
