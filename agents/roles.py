"""The role factory: each agent role's LLM spec, agent object and the executor, built from the
lab's config (``[llm]``, ``[executor]``, ``[guards]``). ``agents.loop.Loop`` calls these once in
its constructor; nothing here holds state."""

from __future__ import annotations

import os
from typing import Any

from agents.analyst import BuiltinAnalyst, LLMAnalyst
from agents.builtin.researcher import builtin_researcher
from agents.engineer import BuiltinDebugger, Executor, LLMDebugger, SandboxExecutor
from agents.judge import BuiltinJudge, LLMJudge
from agents.llm import LLMSpec, parse_llm_spec
from agents.llm_session import LLMSession
from agents.researcher import LLMResearcher, Researcher

__all__ = ["ROLES", "ollama_host", "role_specs", "make_executor", "make_researcher", "make_role"]

#: the agent roles that may each have their own LLM backend
ROLES = ("researcher", "analyst", "judge", "debugger")


def ollama_host(config: Any) -> str | None:
    """The lab's ``[llm] ollama_host``, unless it is the default and OLLAMA_HOST is set."""
    from archive.config import LLMConfig

    host = config.llm.ollama_host
    if host == LLMConfig().ollama_host and os.environ.get("OLLAMA_HOST"):
        return None  # the client reads OLLAMA_HOST
    return host


def role_specs(config: Any, llm: str | None) -> dict[str, LLMSpec]:
    """Each role's backend: ``llm`` (``builtin``, ``ollama:MODEL[@HOST]``, ``openai:MODEL@URL``)
    for all of them when given, else the lab's ``[llm]`` config per role."""
    if llm is not None:
        s = parse_llm_spec(llm)
        if s.backend == "ollama" and not s.url:
            s = LLMSpec("ollama", s.model, ollama_host(config))
        return {r: s for r in ROLES}
    c = config.llm
    out = {}
    for role in ROLES:
        backend = getattr(c, role)
        model = getattr(c, f"{role}_model")
        if backend == "builtin":
            out[role] = LLMSpec("builtin")
        elif backend == "ollama":
            out[role] = LLMSpec("ollama", model, ollama_host(config))
        else:
            out[role] = LLMSpec("openai", model, c.openai_base_url)
    return out


def make_executor(config: Any, scale: Any) -> Executor:
    """The check/evaluate runner of ``[executor]``: local sandbox, or Ray (connected now)."""
    ex_cfg = getattr(config, "executor", None)
    if ex_cfg is not None and getattr(ex_cfg, "kind", "local") != "local":
        from agents.ray_executor import make_executor as make_ray_executor

        # connected now: a missing Ray or an unreachable cluster is a clear error (a
        # ValueError) before the loop starts, not a crash in its first evaluation
        return make_ray_executor(ex_cfg, scale, connect=True)
    return SandboxExecutor(scale, guards=getattr(config, "guards", None),
                           unsafe_no_sandbox=bool(getattr(ex_cfg, "unsafe_no_sandbox", False)))


def make_researcher(llm: LLMSession, seed: int) -> Researcher:
    """The LLM researcher of the session, or the built-in one when the role is ``builtin``."""
    rs = llm.session("researcher")
    if rs is None:
        return builtin_researcher(seed=seed)
    return LLMResearcher(rs.backend, session=rs)


def make_role(llm: LLMSession, role: str) -> Any:
    """The analyst, judge or debugger: its LLM form, or the built-in one."""
    rs = llm.session(role)
    if role == "analyst":
        return BuiltinAnalyst() if rs is None else LLMAnalyst(rs.backend, session=rs)
    if role == "judge":
        return BuiltinJudge() if rs is None else LLMJudge(rs.backend, session=rs)
    return BuiltinDebugger() if rs is None else LLMDebugger(rs.backend, session=rs)
