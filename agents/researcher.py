"""The Researcher: proposes the next experiment from a parent, references, cognition and failures.

Any researcher implements ``propose(ctx: ResearchContext) -> Proposal``. ``LLMResearcher`` asks a
chat model (``agents.llm``) with the prompt of ``agents.prompts.researcher_messages``; the
built-in evolutionary researcher (``agents.builtin.researcher``, made by its
``builtin_researcher``) plugs in through the same interface. This module does not import it: the
built-in researcher depends on the types here, never the other way round.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agents.llm import CallRecorder, ChatBackend
from agents.llm_session import RoleSession
from agents import prompts

__all__ = [
    "Proposal",
    "Rejection",
    "ResearchContext",
    "Researcher",
    "LLMResearcher",
    "ResearchError",
    "validate_code",
]


class ResearchError(RuntimeError):
    """The researcher could not produce a usable proposal for this step."""


@dataclass
class Proposal:
    """A proposed experiment: ``name``, ``motivation`` (markdown), ``code`` (a mixer file).

    What the record keeps besides: ``genome`` (the design as a ``Genome.to_dict()``, when the
    code was rendered from one; None otherwise), ``operators`` (the mutation operators that made
    it), ``cognition`` (ids of the cognition entries the researcher drew on; None: it does not
    say, and the record keeps everything retrieved for it), copied into the record's fields of
    the same names; ``notes`` (anything else, merged into ``record.extra``). ``trusted``: the
    code is the project's own (rendered by the built-in researcher from a genome), so it may run
    without the OS sandbox where bubblewrap is unavailable; LLM-written or user-edited code
    never is.
    """

    name: str
    motivation: str
    code: str
    genome: dict[str, Any] | None = None
    operators: list[str] = field(default_factory=list)
    cognition: list[str] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    trusted: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Proposal:
        """A proposal from its ``dataclasses.asdict`` form (as the crash journal saves it). A
        journal written before the typed fields has them in one ``extra`` dict: ``genome``,
        ``operators`` and ``cognition`` are read from there, the rest becomes ``notes``."""
        d = dict(data)
        old = dict(d.pop("extra", None) or {})
        for key in ("genome", "operators", "cognition"):
            if key in old:
                d.setdefault(key, old.pop(key))
        d.setdefault("notes", old)
        return cls(name=d["name"], motivation=d["motivation"], code=d["code"], genome=d.get("genome"),
                   operators=list(d.get("operators") or []), cognition=d.get("cognition"),
                   notes=dict(d.get("notes") or {}), trusted=bool(d.get("trusted", False)))


@dataclass
class Rejection:
    """A proposal sent back (not novel, rejected by the user) with the reason and the neighbour."""

    proposal: Proposal
    reason: str
    neighbour_id: str | None = None
    neighbour_name: str = ""
    neighbour_motivation: str = ""
    similarity: float | None = None


@dataclass
class ResearchContext:
    """Everything the Researcher sees for one step (docs/ARCHITECTURE.md step 2).

    ``parent``, ``references`` and ``failures`` are ``archive.record.ExperimentRecord``s;
    ``cognition`` is ``[(corpus.schema.Entry, score), ...]`` for the parent's problem statement;
    ``rejections`` the proposals already sent back in this step (novelty rounds, user
    rejections), newest last; ``history`` all earlier records (for a learning researcher);
    ``lab`` the open ``archive.lab.Lab`` (or None in unit tests).
    """

    exp_id: str
    parent: Any
    references: list[Any] = field(default_factory=list)
    cognition: list[tuple[Any, float]] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    scale: str = "probe"
    param_budget: int | None = None
    rng: random.Random = field(default_factory=random.Random)
    recorder: CallRecorder = field(default_factory=CallRecorder)
    lab: Any = None


@runtime_checkable
class Researcher(Protocol):
    """The interface every researcher implements."""

    #: Shown in the record's ``researcher`` field, e.g. ``builtin`` or ``ollama:qwen3``.
    spec: str

    def propose(self, ctx: ResearchContext) -> Proposal:
        """A new proposal for ``ctx``; raises ``ResearchError`` (or ``LLMError``) on failure."""
        ...


def validate_code(code: str) -> str | None:
    """A quick static check of a mixer file: parses, defines ``class Mixer``. Error text or None."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return f"the code does not parse: {exc.msg} (line {exc.lineno})"
    if not any(isinstance(n, ast.ClassDef) and n.name == "Mixer" for n in tree.body):
        return "the code defines no top-level `class Mixer(nn.Module)`"
    return None


class LLMResearcher:
    """A researcher backed by a chat model (Ollama or OpenAI-compatible)."""

    def __init__(self, backend: ChatBackend, retries: int = 2, backoff_s: float = 1.0,
                 session: RoleSession | None = None) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.session = session or RoleSession("researcher", backend, retries=retries, backoff_s=backoff_s)

    def propose(self, ctx: ResearchContext) -> Proposal:
        """Build the prompt (fitted to the context), ask the model, validate the reply (one
        correction round). Raises ``LLMError`` when the model cannot answer this step (the loop
        then asks the built-in researcher)."""
        obj = self.session.ask(ctx.recorder, prompts.researcher_prompt(ctx), prompts.RESEARCHER_SCHEMA,
                               validate=lambda o: validate_code(o["code"]))
        ctx.recorder.step("researcher", "llm", self.spec)
        name = " ".join(str(obj["name"]).split())[:80] or "unnamed"
        cited = [str(e.id) for e, _ in ctx.cognition]
        return Proposal(name=name, motivation=str(obj["motivation"]).strip(), code=str(obj["code"]),
                        cognition=cited)
