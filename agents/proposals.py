"""What research draws on and how its proposals are vetted: the researcher's call (with the
built-in fallback when its LLM is unavailable), the cognition base and its search, the history
and recent failures, the novelty check against the archive and the proposals in flight, and a
proposal's typed fields applied to its record. Used by the research and novelty stages of
``agents.experiment``; ``agents.loop.Loop`` mixes this in.
"""

from __future__ import annotations

from typing import Any

from agents.builtin.researcher import builtin_researcher
from agents.events import Warning
from agents.llm import LLMError
from agents.llm_session import fallback
from agents.researcher import LLMResearcher, Proposal, ResearchContext, ResearchError

__all__ = ["ProposalsMixin"]


class ProposalsMixin:
    """The research and novelty helpers of a ``Loop`` (uses its lab, researcher, locks and
    ``_proposals`` in flight)."""

    def _propose(self, ctx: ResearchContext) -> tuple[Proposal, str]:
        if self.researcher is None:
            fb = self.fallback_researcher
            if fb is None:
                raise ResearchError("no researcher: the built-in researcher is not installed and no LLM is set")
            ctx.recorder.step("researcher", "builtin", getattr(fb, "spec", "fallback"))
            return fb.propose(ctx), getattr(fb, "spec", "fallback")
        if not isinstance(self.researcher, LLMResearcher):
            ctx.recorder.step("researcher", "builtin", getattr(self.researcher, "spec", "builtin"))
            return self.researcher.propose(ctx), self.researcher.spec
        try:
            return self.researcher.propose(ctx), self.researcher.spec
        except LLMError as exc:
            # unreachable, unusable after its correction round, or its circuit open: the
            # built-in researcher answers this step (the model's attempt stays in the transcript)
            fb = builtin_researcher(seed=self.seed)
            fb_spec = getattr(fb, "spec", "builtin")
            fallback(ctx.recorder, "researcher", self.researcher.spec, exc,
                     "built-in researcher" if fb_spec == "builtin" else f"{fb_spec} researcher")
            return fb.propose(ctx), getattr(fb, "spec", "builtin")

    def _measured(self, rec: Any) -> Any:
        """An unmeasured seed stands for its measured copy (committed by ensure_seed_measured)."""
        if rec.metrics:
            return rec
        for other in self.lab.store.all():
            if other.extra.get("measures") == rec.id and other.metrics:
                return other
        return rec

    def _apply_fields(self, record: Any, proposal: Proposal) -> None:
        """The proposal's genome, operators, cited cognition entries and notes into ``record``."""
        if proposal.genome is not None:
            record.genome = proposal.genome
        record.operators = list(proposal.operators)
        if proposal.cognition is not None:
            # what the researcher says it drew on; everything retrieved for it stays in extra
            record.extra["retrieved"] = list(record.cognition)
            record.cognition = list(dict.fromkeys(str(c) for c in proposal.cognition))
        record.extra.update(proposal.notes)

    def _cognition_for(self, parent: Any) -> list[tuple[Any, float]]:
        cb = self.cognition_base()
        query = (parent.problem or "").strip() or (parent.analysis or "").strip()[:2000]
        if cb is None or not query:
            return []
        try:
            return list(cb.search(query, k=3))
        except Exception as exc:
            self.emit(Warning(message=f"cognition search failed: {exc}", source="loop"))
            return []

    def _history(self) -> list[Any]:
        return list(self.lab.store.all())

    def _novelty(self, proposal: Proposal) -> tuple[bool, tuple[str, float] | None]:
        """docs/ARCHITECTURE.md step 3. A proposal that carries a genome (the built-in researcher's) is a
        structured design: it is a rehash exactly when an earlier experiment has the same genome.
        Its motivation is written from a template, so embedding similarity between two different
        genomes' motivations runs at 0.7-0.96 and would reject genuinely new designs. Free-text
        proposals (LLM researchers) are judged by motivation similarity against the threshold.
        Proposals in flight (not in the archive yet; ``concurrency`` > 1) count as earlier ones."""
        genome = proposal.genome
        in_flight = list(self._proposals.items())
        if genome:
            for rec in self.lab.store.all():
                if rec.genome == genome:
                    return False, (rec.id, 1.0)
            for other, p in in_flight:
                if p.genome == genome:
                    return False, (other, 1.0)
            return True, None
        with self._novelty_lock:
            novel, near = self.lab.novelty.check(proposal.motivation)
            others = [(i, p.motivation) for i, p in in_flight if p.motivation]
            if not novel or not others:
                return novel, near
            nov = self.lab.novelty
            vecs = nov.embedder.embed([proposal.motivation] + [m for _, m in others])
        sims = [float(vecs[0] @ v) for v in vecs[1:]]
        k = max(range(len(sims)), key=sims.__getitem__)
        if sims[k] >= nov.threshold:
            return False, (others[k][0], sims[k])
        return novel, near

    def _neighbour(self, exp_id: str) -> Any:
        """The experiment a proposal was too close to: an archived record, or a proposal in
        flight (both have ``name`` and ``motivation``)."""
        p = self._proposals.get(exp_id)
        if exp_id not in self.lab.store and p is not None:
            return p
        return self.lab.store.get(exp_id)

    def _recent_failures(self, n: int = 3) -> list[Any]:
        fails = [r for r in self.lab.store.all() if r.status in ("failed", "too_slow", "stopped_early")]
        return fails[-n:]

    def cognition_base(self) -> Any:
        """The cognition base (loaded once; None if it cannot be loaded)."""
        if not self._cognition_loaded:
            self._cognition_loaded = True
            try:
                from corpus.retrieval import CognitionBase

                emb = getattr(getattr(self.lab, "novelty", None), "embedder", None)
                self._cognition = CognitionBase.load(embedder=emb)
            except Exception as exc:  # a missing corpus never stops the loop
                self.emit(Warning(message=f"cognition base unavailable: {exc}", source="loop"))
                self._cognition = None
        return self._cognition
