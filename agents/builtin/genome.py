"""The typed design space of the built-in researcher.

A :class:`Genome` names one token mixer by its design choices: the feature map on queries and
keys, the state update rule (additive, decayed, gated, delta, gated delta), how the decay is
parameterised, which of q/k/v get a short causal convolution, the output gate and normalisation,
the head layout and the state expansion. :func:`agents.builtin.render.render` turns a genome into
a standalone mixer file built on ``training.ops``.

Genomes are plain data: they are stored in every experiment's record (``record.genome``) so that
any experiment can be re-rendered and re-run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

#: Feature maps applied to queries and keys (names understood by ``training.ops.feature_map``).
FEATURE_MAPS = ("identity", "elu_plus_one", "relu", "silu", "squared_relu")
#: State update rules, from the plain sum of outer products to the gated delta rule.
UPDATES = ("additive", "decayed", "gated", "delta", "gated_delta")
#: Decay parameterisations. ``fixed`` = per-head constant (RetNet); ``lowrank_logsigmoid`` =
#: GLA's data-dependent per-channel gate; ``softplus`` = Mamba-2-style exp(-A * softplus(a x + dt));
#: ``sigmoid`` = a plain sigmoid gate (data dependent, scalar per head for gated delta).
DECAYS = ("none", "fixed", "lowrank_logsigmoid", "softplus", "sigmoid")
#: Ranges of the delta rule's writing strength beta: (0, 1) or (0, 2) (negative eigenvalues).
BETA_RANGES = ("unit", "double")
#: Normalisations of q and k before the update.
QK_NORMS = ("none", "l2")
#: Output gates multiplied onto the mixer output.
OUTPUT_GATES = ("none", "swish", "sigmoid")
#: Output normalisation per head.
OUTPUT_NORMS = ("none", "rms")
#: Which of the update rules read the decay gene, and which need beta.
DECAYED_UPDATES = ("decayed", "gated", "gated_delta")
DELTA_UPDATES = ("delta", "gated_delta")


class GenomeError(ValueError):
    """A genome that names a value outside the design space, or an inconsistent combination."""


@dataclass(frozen=True)
class Genome:
    """One point of the design space. Every field has a small finite set of legal values.

    Attributes:
        feature_map: map applied to q and k (see :data:`FEATURE_MAPS`).
        qk_norm: ``"l2"`` normalises q and k per head (needed for a stable delta rule).
        update: the state update rule (see :data:`UPDATES`).
        decay: decay parameterisation; ``"none"`` unless ``update`` is decayed/gated/gated_delta.
        beta_range: writing strength range for delta updates.
        conv_q, conv_k, conv_v: a short causal depthwise convolution on that projection.
        conv_size: the convolution's kernel size (2..8).
        output_gate: gate on the output (``"swish"`` = x * silu(W x) style).
        output_norm: per-head RMS normalisation of the output before the gate.
        heads_factor: the number of heads relative to the backbone's ``n_heads`` (1/2, 1, 2).
        expand_k: key (state) dimension relative to the head dimension (state expansion).
        expand_v: value dimension relative to the head dimension.
        normalize: for additive/decayed updates, divide by the running normaliser q·Σk.
    """

    feature_map: str = "silu"
    qk_norm: str = "l2"
    update: str = "delta"
    decay: str = "none"
    beta_range: str = "unit"
    conv_q: bool = True
    conv_k: bool = True
    conv_v: bool = True
    conv_size: int = 4
    output_gate: str = "none"
    output_norm: str = "rms"
    heads_factor: float = 1.0
    expand_k: float = 1.0
    expand_v: float = 1.0
    normalize: bool = False

    def validate(self) -> "Genome":
        """Return ``self`` if every gene is legal and consistent, else raise :class:`GenomeError`."""
        choices = {
            "feature_map": FEATURE_MAPS,
            "qk_norm": QK_NORMS,
            "update": UPDATES,
            "decay": DECAYS,
            "beta_range": BETA_RANGES,
            "output_gate": OUTPUT_GATES,
            "output_norm": OUTPUT_NORMS,
            "heads_factor": (0.5, 1.0, 2.0),
            "expand_k": (0.5, 1.0, 2.0),
            "expand_v": (1.0, 2.0),
        }
        for name, legal in choices.items():
            if getattr(self, name) not in legal:
                raise GenomeError(f"gene {name}={getattr(self, name)!r} is not one of {legal}")
        if not 2 <= int(self.conv_size) <= 8:
            raise GenomeError(f"gene conv_size={self.conv_size} must lie in 2..8")
        if self.update in DECAYED_UPDATES and self.decay == "none":
            raise GenomeError(f"update {self.update!r} needs a decay parameterisation")
        if self.update not in DECAYED_UPDATES and self.decay != "none":
            raise GenomeError(f"update {self.update!r} takes no decay (got {self.decay!r})")
        if self.update == "decayed" and self.decay != "fixed":
            raise GenomeError("the 'decayed' update uses fixed per-head decays")
        if self.update in ("gated", "gated_delta") and self.decay == "fixed":
            raise GenomeError(f"update {self.update!r} needs a data-dependent decay")
        if self.update == "gated_delta" and self.decay == "lowrank_logsigmoid":
            raise GenomeError("gated_delta uses a scalar decay per head (softplus or sigmoid)")
        if self.update in DELTA_UPDATES and self.qk_norm != "l2":
            raise GenomeError("delta updates need L2-normalised keys (qk_norm='l2') to stay stable")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The genome as a JSON-able dict (stored in the experiment record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Genome":
        """Rebuild a genome from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise GenomeError(f"unknown genes: {sorted(unknown)}")
        values = dict(data)
        for key in ("heads_factor", "expand_k", "expand_v"):
            if key in values:
                values[key] = float(values[key])
        return cls(**values).validate()

    def with_(self, **changes: Any) -> "Genome":
        """A copy with some genes changed (not validated: call :meth:`validate`)."""
        return replace(self, **changes)

    def diff(self, other: "Genome") -> dict[str, tuple[Any, Any]]:
        """Genes that differ: ``{gene: (self value, other value)}``."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }

    def describe(self) -> str:
        """A one-line human description, e.g. ``gated delta rule, softplus decay, conv qkv/4, ...``."""
        parts = [self.update.replace("_", " ") + (" rule" if "delta" in self.update else " update")]
        if self.decay != "none":
            parts.append(f"{self.decay} decay")
        if self.update in DELTA_UPDATES and self.beta_range == "double":
            parts.append("beta in (0,2)")
        parts.append(f"{self.feature_map} features" + (", L2 q/k" if self.qk_norm == "l2" else ""))
        convs = "".join(n for n, on in (("q", self.conv_q), ("k", self.conv_k), ("v", self.conv_v)) if on)
        parts.append(f"conv {convs}/{self.conv_size}" if convs else "no short conv")
        if self.output_norm != "none":
            parts.append("output RMSNorm")
        if self.output_gate != "none":
            parts.append(f"{self.output_gate} output gate")
        if self.heads_factor != 1.0:
            parts.append(f"heads x{self.heads_factor:g}")
        if self.expand_k != 1.0:
            parts.append(f"key expansion x{self.expand_k:g}")
        if self.expand_v != 1.0:
            parts.append(f"value expansion x{self.expand_v:g}")
        if self.normalize:
            parts.append("normalised")
        return ", ".join(parts)


#: The seed of every lab: DeltaNet (silu features, L2-normalised q/k, sigmoid beta, short
#: convolutions on q/k/v, per-head output RMSNorm), as in training/mixers/deltanet.py.
SEED_GENOME = Genome().validate()

#: Genomes of the reference mixers that the design space covers, by reference-mixer name.
REFERENCE_GENOMES: dict[str, Genome] = {
    "deltanet": SEED_GENOME,
    "gated_deltanet": Genome(update="gated_delta", decay="softplus", output_gate="swish").validate(),
    "gla": Genome(
        feature_map="identity", qk_norm="none", update="gated", decay="lowrank_logsigmoid",
        output_gate="swish",
    ).validate(),
    "retnet": Genome(
        feature_map="identity", qk_norm="none", update="decayed", decay="fixed", output_gate="swish",
    ).validate(),
    "linear_attention": Genome(
        feature_map="elu_plus_one", qk_norm="none", update="additive", normalize=True,
    ).validate(),
}
