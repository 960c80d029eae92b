"""The built-in researcher's search: operator bandit, cognition-guided choice, proposal writing.

One proposal = the parent's genome transformed by one or two mutation operators (or a crossover
with a reference), never a genome the lab has tried before. Which operators are tried is learnt
from the lab's own history: every experiment records the operators that produced it, and the gain
in fitness over its parent is that operator's reward (Thompson sampling over Gaussian posteriors).
The cognition entries retrieved for the parent's problem statement add a bonus to the operators
whose lever they support, and the strongest such entry is cited in the motivation.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from agents.builtin.genome import Genome
from agents.builtin.operators import OPERATORS, Operator, crossover
from agents.builtin.render import render

#: Reward given to an operator whose child failed (did not check or train).
FAILURE_REWARD = -0.05
#: Prior of an operator's mean gain and the noise scale of one observation.
PRIOR_MEAN, PRIOR_SD, OBS_SD = 0.0, 0.03, 0.05
#: How much a supporting cognition entry (similarity ~0.3-0.7) adds to an operator's draw.
COGNITION_BONUS = 0.03


def genome_key(genome: Genome) -> str:
    """A canonical string of a genome (dedup key)."""
    return json.dumps(genome.to_dict(), sort_keys=True)


@dataclass
class HistoryItem:
    """What the bandit needs to know of one past experiment."""

    genome: Genome | None
    operators: list[str]
    fitness: float | None
    parent_fitness: float | None
    failed: bool


@dataclass
class CognitionHit:
    """A retrieved cognition entry: id, title, levers, similarity score and a short summary."""

    id: str
    title: str
    levers: list[str]
    score: float
    summary: str = ""


@dataclass
class OperatorStats:
    """Posterior of one operator's mean fitness gain."""

    n: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float:
        """Posterior mean of the gain (Gaussian prior :data:`PRIOR_MEAN`, :data:`PRIOR_SD`)."""
        prec = 1 / PRIOR_SD**2 + self.n / OBS_SD**2
        return (PRIOR_MEAN / PRIOR_SD**2 + self.total / OBS_SD**2) / prec

    @property
    def sd(self) -> float:
        """Posterior standard deviation of the gain."""
        return math.sqrt(1 / (1 / PRIOR_SD**2 + self.n / OBS_SD**2))


class OperatorBandit:
    """Thompson sampling over operators, learnt from the lab's history."""

    def __init__(self) -> None:
        self.stats: dict[str, OperatorStats] = {name: OperatorStats() for name in [*OPERATORS, "crossover"]}

    @classmethod
    def from_history(cls, history: Iterable[HistoryItem]) -> "OperatorBandit":
        """Credit each past experiment's gain over its parent to the operators that made it."""
        bandit = cls()
        for item in history:
            if not item.operators:
                continue
            if item.failed or item.fitness is None:
                reward = FAILURE_REWARD
            elif item.parent_fitness is None:
                continue
            else:
                reward = item.fitness - item.parent_fitness
            for op in item.operators:
                st = bandit.stats.setdefault(op, OperatorStats())
                st.n += 1
                st.total += reward / len(item.operators)
        return bandit

    def draw(self, rng: random.Random, bonus: dict[str, float] | None = None) -> dict[str, float]:
        """One Thompson sample per operator, plus the cognition bonus."""
        bonus = bonus or {}
        return {name: rng.gauss(st.mean, st.sd) + bonus.get(name, 0.0) for name, st in self.stats.items()}

    def table(self) -> list[tuple[str, int, float]]:
        """``(operator, tries, posterior mean gain)``, best first."""
        rows = [(name, st.n, st.mean) for name, st in self.stats.items()]
        return sorted(rows, key=lambda r: -r[2])


@dataclass
class BuiltinProposal:
    """A proposal of the built-in researcher, with everything needed to reproduce and credit it."""

    name: str
    motivation: str
    code: str
    genome: Genome
    operators: list[str]
    cited: list[str]
    changes: list[str] = field(default_factory=list)

    def extra(self) -> dict[str, Any]:
        """Fields for the experiment record (``genome``, ``operators``, ``cognition``)."""
        return {"genome": self.genome.to_dict(), "operators": self.operators, "cognition": self.cited,
                "changes": self.changes}


_UPDATE_WORDS = {"additive": "Linear", "decayed": "Retention", "gated": "Gated", "delta": "Delta",
                 "gated_delta": "GatedDelta"}
_FEATURE_WORDS = {"identity": "", "elu_plus_one": "Elu", "relu": "Relu", "silu": "", "squared_relu": "Sq"}


def design_name(genome: Genome) -> str:
    """A readable, stable name for a genome, e.g. ``GatedDelta-SwishGate-Kx2-3fa``."""
    parts = [_FEATURE_WORDS[genome.feature_map] + _UPDATE_WORDS[genome.update]]
    if genome.decay in ("softplus", "sigmoid") and genome.update != "decayed":
        parts[0] += {"softplus": "", "sigmoid": "Sig"}[genome.decay]
    if genome.beta_range == "double" and "delta" in genome.update:
        parts.append("Neg")
    if genome.output_gate != "none":
        parts.append(genome.output_gate.capitalize() + "Gate")
    if genome.expand_k != 1.0:
        parts.append(f"Kx{genome.expand_k:g}")
    if genome.expand_v != 1.0:
        parts.append(f"Vx{genome.expand_v:g}")
    if genome.heads_factor != 1.0:
        parts.append(f"H{genome.heads_factor:g}")
    tag = hashlib.sha1(genome_key(genome).encode()).hexdigest()[:3]
    return "-".join(parts + [tag])


def _cognition_bonus(hits: Sequence[CognitionHit]) -> tuple[dict[str, float], dict[str, CognitionHit]]:
    bonus: dict[str, float] = {}
    best: dict[str, CognitionHit] = {}
    for hit in hits:
        for name, op in OPERATORS.items():
            if op.lever in hit.levers:
                b = COGNITION_BONUS * max(hit.score, 0.0)
                if b > bonus.get(name, -1.0):
                    bonus[name] = b
                    best[name] = hit
    return bonus, best


def propose(
    parent_genome: Genome,
    parent_name: str,
    parent_fitness: float | None,
    references: Sequence[Genome],
    history: Sequence[HistoryItem],
    cognition: Sequence[CognitionHit],
    rng: random.Random,
    tried: set[str] | None = None,
    feedback: str = "",
    fits: Callable[[Genome], bool] | None = None,
) -> BuiltinProposal:
    """Propose a new design from ``parent_genome``.

    Args:
        parent_genome: the parent's genome.
        parent_name: the parent's name (for the motivation).
        parent_fitness: the parent's fitness, if measured.
        references: genomes of the reference experiments (crossover partners).
        history: the lab's past experiments (for the operator bandit).
        cognition: entries retrieved for the parent's problem statement.
        rng: the random source (seeded by the loop for reproducibility).
        tried: keys (:func:`genome_key`) of genomes already tried; never proposed again.
        feedback: why the previous proposal was sent back (novelty, rejection), quoted.
        fits: a genome is proposed only if ``fits(genome)`` (e.g. within the parameter budget).

    Raises:
        RuntimeError: when no untried genome is reachable in a bounded number of draws.
    """
    tried = set(tried or ())
    tried.add(genome_key(parent_genome))
    bandit = OperatorBandit.from_history(history)
    bonus, supporters = _cognition_bonus(cognition)
    for attempt in range(64):
        draws = bandit.draw(rng, bonus)
        use_cross = bool(references) and rng.random() < 0.2
        applied: list[tuple[str, str]] = []
        genome = parent_genome
        if use_cross:
            out = crossover(parent_genome, rng.choice(list(references)), rng)
            if out is not None:
                genome, what = out
                applied.append(("crossover", what))
        n_mut = 1 if applied else (1 if rng.random() < 0.65 else 2)
        ranked = sorted(OPERATORS.values(), key=lambda op: -draws[op.name])
        # after a few failed attempts, widen the choice beyond the bandit's favourites
        pool: list[Operator] = ranked[: 2 + attempt // 4]
        rng.shuffle(pool)
        pool.sort(key=lambda op: -draws[op.name] - rng.random() * 0.01 * attempt)
        for op in pool:
            if len([a for a in applied if a[0] != "crossover"]) >= n_mut:
                break
            out = op.apply(genome, rng)
            if out is not None:
                genome, what = out
                applied.append((op.name, what))
        if applied and genome_key(genome) not in tried and (fits is None or fits(genome)):
            break
    else:
        raise RuntimeError("the built-in researcher found no untried design near this parent")

    ops_used = [name for name, _ in applied]
    cited = [supporters[n] for n in ops_used if n in supporters]
    name = design_name(genome)
    lines = [
        f"{name} modifies {parent_name}"
        + (f" (fitness {parent_fitness:.3f})" if parent_fitness is not None else "")
        + f": {'; '.join(what for _, what in applied)}.",
        "",
        f"Design: {genome.describe()}.",
        "",
    ]
    for op_name in ops_used:
        if op_name == "crossover":
            lines.append("Crossover recombines gene groups of the parent and a high-ranked reference.")
            continue
        op = OPERATORS[op_name]
        line = f"Operator {op_name} ({op.summary})"
        if op_name in supporters:
            hit = supporters[op_name]
            line += f", suggested by {hit.title} [{hit.id}], similarity {hit.score:.2f} to the parent's problem"
            if hit.summary:
                line += f": {hit.summary.strip()}"
        lines.append(line + ".")
    st = {name: bandit.stats[name] for name in ops_used}
    lines += [
        "",
        "Operator record in this lab: "
        + ", ".join(f"{n} {s.n} tries, mean gain {s.mean:+.3f}" for n, s in st.items())
        + ".",
    ]
    if feedback:
        lines += ["", f"Previous attempt sent back: {feedback.strip()}"]
    motivation = "\n".join(lines)
    code = render(genome, name=name, summary=lines[0])
    return BuiltinProposal(
        name=name,
        motivation=motivation,
        code=code,
        genome=genome,
        operators=ops_used,
        cited=[h.id for h in cited],
        changes=[what for _, what in applied],
    )
