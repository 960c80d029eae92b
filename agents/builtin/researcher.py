"""The built-in researcher as an ``agents.researcher.Researcher``: no LLM needed.

It reads the parent's genome from its record (the seed and reference mixers map to known
genomes; an experiment written by an LLM has no genome and is approached through the nearest
reference genome), asks :func:`agents.builtin.search.propose` for an untried child, and returns a
:class:`~agents.researcher.Proposal` that carries the genome, the operators and the cognition
entries cited, so the record can be re-rendered and the operator bandit can learn.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable

from agents.builtin.genome import REFERENCE_GENOMES, SEED_GENOME, Genome, GenomeError
from agents.builtin.render import estimate_params
from agents.builtin.search import CognitionHit, HistoryItem, genome_key, propose
from agents.researcher import Proposal, ResearchContext, ResearchError
from archive.record import SEED_ID


def record_genome(record: Any) -> Genome | None:
    """The genome of an experiment record (dict or ``ExperimentRecord``), or None if it has none."""
    if record is None:
        return None
    data = record.get("genome") if isinstance(record, dict) else getattr(record, "genome", None)
    if data:
        try:
            return Genome.from_dict(dict(data))
        except (GenomeError, TypeError):
            return None
    parent = record.get("parent") if isinstance(record, dict) else getattr(record, "parent", None)
    extra = (record.get("extra") if isinstance(record, dict) else getattr(record, "extra", None)) or {}
    if parent is None or extra.get("measures") == SEED_ID:  # the seed of the lab (DeltaNet), or its measurement
        return SEED_GENOME
    return None


def _first_sentence(text: str, limit: int = 220) -> str:
    text = " ".join(text.split())
    cut = text.find(". ")
    out = text[: cut + 1] if 0 < cut < limit else text[:limit]
    return out.rstrip(". ")


def _hits(cognition: Iterable[tuple[Any, float]]) -> list[CognitionHit]:
    hits = []
    for entry, score in cognition:
        hits.append(CognitionHit(id=str(entry.id), title=str(entry.title), levers=list(entry.levers),
                                 score=float(score), summary=_first_sentence(getattr(entry, "scenario", ""))))
    return hits


def _history(records: Iterable[Any]) -> list[HistoryItem]:
    recs = list(records)
    fitness = {str(_get(r, "id")): _get(r, "fitness") for r in recs}
    items = []
    for r in recs:
        items.append(HistoryItem(
            genome=record_genome(r),
            operators=list(_get(r, "operators") or []),
            fitness=_get(r, "fitness"),
            parent_fitness=fitness.get(str(_get(r, "parent"))),
            failed=_get(r, "status") == "failed",
        ))
    return items


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, dict) else getattr(record, key, None)


def budget_check(scale: str, budget: int | None) -> Callable[[Genome], bool] | None:
    """``genome -> bool``: whether the rendered mixer stays within ``budget`` parameters at the
    scale's width and heads (counted exactly from the genome; no code runs). None: no budget."""
    if not budget:
        return None
    try:
        from training.scales import get_scale

        s = get_scale(scale)
    except (KeyError, ValueError, TypeError):
        return None
    return lambda g: estimate_params(g, s.d_model, s.n_heads) <= budget


class BuiltinResearcher:
    """Evolutionary search over the typed mixer design space (see ``agents.builtin``)."""

    spec = "builtin"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def propose(self, ctx: ResearchContext) -> Proposal:
        """An untried child of ``ctx.parent``, steered by the bandit and the cognition entries."""
        parent_genome = record_genome(ctx.parent)
        parent_name = str(_get(ctx.parent, "name") or "the parent")
        if parent_genome is None:
            # an LLM-written parent: start from the seed's family, keeping the lineage
            parent_genome = SEED_GENOME
            parent_name += " (approached through the DeltaNet genome: it has no genome)"
        refs = [g for g in (record_genome(r) for r in ctx.references) if g is not None]
        refs += [g for g in REFERENCE_GENOMES.values() if g != parent_genome][:2]
        tried = {genome_key(g) for g in (record_genome(r) for r in ctx.history) if g is not None}
        for rej in ctx.rejections:
            if rej.proposal.genome:
                tried.add(genome_key(Genome.from_dict(dict(rej.proposal.genome))))
        feedback = ctx.rejections[-1].reason if ctx.rejections else ""
        rng = random.Random(f"{self.seed}:{ctx.exp_id}:{len(ctx.rejections)}")
        fits = budget_check(ctx.scale, ctx.param_budget)
        try:
            prop = propose(parent_genome, parent_name, _get(ctx.parent, "fitness"), refs,
                           _history(ctx.history), _hits(ctx.cognition), rng, tried, feedback, fits)
        except RuntimeError as exc:
            raise ResearchError(str(exc)) from exc
        # rendered by this project from a genome: trusted (runs even where bwrap is missing)
        return Proposal(name=prop.name, motivation=prop.motivation, code=prop.code,
                        genome=prop.genome.to_dict(), operators=prop.operators, cognition=prop.cited,
                        notes={"changes": prop.changes}, trusted=True)


def builtin_researcher(seed: int = 0) -> BuiltinResearcher:
    """The built-in evolutionary researcher with ``seed`` (the offline default, and the fallback
    for a step an LLM could not answer)."""
    return BuiltinResearcher(seed=seed)
