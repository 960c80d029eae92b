"""A minimal rule-based stand-in researcher for the tests and benchmarks (never the product's).

It edits one default hyper-parameter of the parent's ``Mixer.__init__`` (``expand_v``,
``conv_size``, ``chunk_size``, ``expand_k``) and says so in the motivation, so the loop can be
exercised with proposals of a known, small change and without an LLM; it implements the same
``propose(ctx) -> Proposal`` as the built-in evolutionary researcher (``agents.builtin``).
"""

from __future__ import annotations

import re
import time

from agents.researcher import Proposal, ResearchContext, ResearchError

__all__ = ["StandInResearcher", "HYPERPARAMETERS", "set_default"]

#: hyper-parameter -> values to try, with the reason given in the motivation.
HYPERPARAMETERS: dict[str, tuple[tuple, str]] = {
    "chunk_size": ((16, 32, 64), "a different chunk length of the chunked recurrence trades intra-chunk "
                                 "parallel work against the sequential state passing"),
    "conv_size": ((2, 3, 4), "the width of the short causal convolution sets how many neighbouring "
                             "tokens are mixed locally before the recurrent memory is written"),
    "expand_v": ((0.5, 1.0), "a narrower value projection halves the memory's value width, testing "
                             "whether recall needs the full state size"),
    "expand_k": ((1.0, 1.5), "a wider key projection enlarges the key space of the associative memory, "
                             "reducing interference between stored keys"),
}


#: A parameter's annotation: a name, or a union of names (``int | None``).
_TYPE = r"\w+(?:\s*\|\s*\w+)*"


def set_default(code: str, name: str, value: object) -> str | None:
    """``code`` with the default of keyword ``name`` (``name: type = value``, the type may be a
    union such as ``int | None``) replaced, or None."""
    pat = re.compile(rf"(\b{name}\s*:\s*{_TYPE}\s*=\s*)([^,\)\n]+)")
    if not pat.search(code):
        return None
    return pat.sub(lambda m: m.group(1) + repr(value), code, count=1)


def _current(code: str, name: str) -> str | None:
    m = re.search(rf"\b{name}\s*:\s*{_TYPE}\s*=\s*([^,\)\n]+)", code)
    return m.group(1).strip() if m else None


class StandInResearcher:
    """Edits one hyper-parameter of the parent per proposal (tests only)."""

    spec = "standin"

    def propose(self, ctx: ResearchContext) -> Proposal:
        """Pick an untried (hyper-parameter, value) of the parent; avoid rejected ones."""
        t0 = time.perf_counter()
        code = ctx.parent.code or ""
        rejected = {(r.proposal.notes.get("hyperparameter"), str(r.proposal.notes.get("value")))
                    for r in ctx.rejections}
        tried = {(h.extra.get("hyperparameter"), str(h.extra.get("value")), getattr(h, "parent", None))
                 for h in ctx.history if getattr(h, "extra", None)}
        options = []
        for name, (values, why) in HYPERPARAMETERS.items():
            cur = _current(code, name)
            if cur is None:
                continue
            for v in values:
                if repr(v) == cur or (name, str(v)) in rejected or (name, str(v), ctx.parent.id) in tried:
                    continue
                options.append((name, v, why, cur))
        if not options:
            raise ResearchError(f"the stand-in researcher has nothing left to vary in {ctx.parent.id}")
        name, value, why, cur = ctx.rng.choice(options)
        new = set_default(code, name, value)
        assert new is not None
        hp = dict((ctx.parent.extra or {}).get("hyperparameters") or {})
        hp[name] = value
        title = f"{ctx.parent.name.split('-')[0]}-{name.replace('_', '')}{value}"
        motivation = f"Set {name} from {cur} to {value!r} in {ctx.parent.name}: {why}."
        ctx.recorder.record("researcher", "standin", f"vary a hyper-parameter of {ctx.parent.id}",
                            motivation, time.perf_counter() - t0, None, None)
        return Proposal(title, motivation, new, notes={"hyperparameter": name, "value": value,
                                                        "hyperparameters": hp})
