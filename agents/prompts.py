"""Prompts and reply schemas of the LLM agents (Researcher, Debugger, Analyst, Judge).

Each ``*_messages`` function returns a chat (system + user message); each ``*_SCHEMA`` is the JSON
schema passed to the backend as structured output. The system prompts start with "You are the
<Role>" (the scripted test server routes replies by it).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "RESEARCHER_SCHEMA",
    "DEBUGGER_SCHEMA",
    "ANALYST_SCHEMA",
    "JUDGE_SCHEMA",
    "MIXER_CONTRACT",
    "researcher_messages",
    "debugger_messages",
    "analyst_messages",
    "judge_messages",
    "summarize_metrics",
]

RESEARCHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "short CamelCase name of the design"},
        "motivation": {"type": "string", "description": "what changes, why, and what it should improve"},
        "code": {"type": "string", "description": "the complete mixer file"},
    },
    "required": ["name", "motivation", "code"],
}

DEBUGGER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "explanation": {"type": "string", "description": "what was wrong and what you changed"},
        "code": {"type": "string", "description": "the complete repaired mixer file"},
    },
    "required": ["explanation", "code"],
}

ANALYST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "design_evaluation": {"type": "string"},
        "results": {"type": "string"},
        "expectation_vs_reality": {"type": "string"},
        "explanation": {"type": "string"},
        "insights": {"type": "string"},
        "problem": {"type": "string", "description": "one line: the main remaining problem, as symptoms"},
    },
    "required": ["design_evaluation", "results", "expectation_vs_reality", "explanation", "insights", "problem"],
}

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "performance": {"type": "integer", "minimum": 1, "maximum": 10},
        "innovation": {"type": "integer", "minimum": 1, "maximum": 10},
        "complexity": {"type": "integer", "minimum": 1, "maximum": 10},
        "reason": {"type": "string"},
    },
    "required": ["performance", "innovation", "complexity", "reason"],
}

MIXER_CONTRACT = """\
A mixer is ONE standalone Python file that defines
    class Mixer(torch.nn.Module):
        def __init__(self, d_model: int, n_heads: int, **kwargs): ...
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, length, d_model] -> same shape
Rules: it must be causal (output at t depends only on inputs <= t) and sub-quadratic in length
(no L x L attention matrix). It may import only torch, torch.nn, torch.nn.functional, math, einops,
typing, dataclasses, functools and training.ops. training.ops provides (layout q, k: [B, H, L, Dk],
v: [B, H, L, Dv]): linear_attention(q, k, v, scale=None, normalize=False), retention(q, k, v,
decay[H]), gated_linear_attention(q, k, v, log_decay[B,H,L,Dk]), delta_rule(q, k, v, beta[B,H,L]),
gated_delta_rule(q, k, v, beta, log_decay[B,H,L]), short_conv / ShortConvolution(d, kernel_size=4),
rms_norm, gated_rms_norm, l2_norm, RMSNorm(d), GatedRMSNorm(d), feature_map(name).
Keep a short causal convolution (k=4) and stay within the parameter budget."""

_SYS_RESEARCHER = (
    "You are the Researcher of an automated architecture-discovery lab. You design new token-mixer "
    "layers for a small language model and propose one experiment at a time. Build on the parent "
    "design, learn from the analysis, the references, the literature notes and the recent failures, "
    "and change something that addresses the stated problem. Reply with one JSON object with the "
    "fields name, motivation and code (the complete file).\n\n" + MIXER_CONTRACT
)

_SYS_DEBUGGER = (
    "You are the Debugger of an automated architecture-discovery lab. A proposed mixer file failed "
    "its checks or its training. Repair it with the smallest change that keeps the design's idea; "
    "never replace the idea by a different architecture. Reply with one JSON object with the fields "
    "explanation and code (the complete repaired file).\n\n" + MIXER_CONTRACT
)

_SYS_ANALYST = (
    "You are the Analyst of an automated architecture-discovery lab. Given an experiment's design and "
    "results, its parent, its siblings and the reference baselines, explain what happened. Compare "
    "with the parent and baselines; where siblings differ in one component, use them as an ablation "
    "to say which component made the difference. Reply with one JSON object with the fields "
    "design_evaluation, results, expectation_vs_reality, explanation, insights and problem (ONE line "
    "stating the main remaining weakness as observable symptoms, used to search the literature)."
)

_SYS_JUDGE = (
    "You are the Judge of an automated architecture-discovery lab. Score the experiment from 1 to 10 on "
    "performance (its measured results against the parent and the baselines), innovation (how new the "
    "idea is against what the lab has tried) and complexity (10 = the design is simple and efficient "
    "for what it achieves, 1 = needlessly complex, slow or fragile). Reply with one JSON object with "
    "the integer fields performance, innovation, complexity and a short reason."
)


def summarize_metrics(metrics: dict[str, Any] | None) -> str:
    """A compact one-paragraph view of an evaluation dict (no loss curve)."""
    if not metrics:
        return "not measured"
    parts = []
    for k in ("status", "val_loss", "val_bpb", "train_loss", "probe_mean", "tokens_per_s", "params",
              "mixer_params", "train_seconds"):
        v = metrics.get(k)
        if v is not None and v != "":
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    probes = metrics.get("probes") or {}
    if probes:
        parts.append("probes: " + ", ".join(
            f"{n}={a:.3f}" if isinstance(a, (int, float)) else f"{n}=n/a" for n, a in probes.items()))
    for k in ("stop_reason", "error"):
        if metrics.get(k):
            parts.append(f"{k}: {metrics[k]}")
    return "; ".join(parts) or "not measured"


def _rec_summary(rec: Any, code: bool = False, limit: int = 600) -> str:
    motivation = (getattr(rec, "motivation", "") or "").strip()
    if len(motivation) > limit:
        motivation = motivation[:limit] + "…"
    lines = [f"### {rec.id} {rec.name} (status {rec.status}, fitness "
             f"{rec.fitness if rec.fitness is not None else 'n/a'})",
             f"Motivation: {motivation or '(none)'}",
             f"Results: {summarize_metrics(rec.metrics)}"]
    if code:
        lines.append("Code:\n```python\n" + (rec.code or "").rstrip() + "\n```")
    return "\n".join(lines)


def _baselines_text(baselines: dict[str, dict[str, Any]]) -> str:
    if not baselines:
        return "(no baselines measured)"
    return "\n".join(f"- {name}: {summarize_metrics(m)}" for name, m in sorted(baselines.items()))


def researcher_messages(ctx: Any) -> list[dict[str, str]]:
    """The Researcher's chat for a ``ResearchContext``."""
    p = ctx.parent
    parts = [f"Experiment {ctx.exp_id} at the {ctx.scale} scale"
             + (f"; mixer parameter budget {ctx.param_budget}" if ctx.param_budget else "") + ".",
             "## Parent\n" + _rec_summary(p, code=True)]
    if getattr(p, "analysis", ""):
        parts.append("## Parent's analysis\n" + p.analysis.strip())
    if getattr(p, "problem", ""):
        parts.append("## Problem to address\n" + p.problem.strip())
    if ctx.baselines:
        parts.append("## Reference baselines at this scale\n" + _baselines_text(ctx.baselines))
    if ctx.references:
        parts.append("## Other designs in the lab (for ideas)\n" + "\n\n".join(_rec_summary(r, limit=300) for r in ctx.references))
    if ctx.cognition:
        notes = []
        for entry, score in ctx.cognition:
            notes.append(f"### {entry.title} ({entry.year}; relevance {score:.2f})\n"
                         f"When: {entry.scenario.strip()}\nMechanism: {entry.algorithm.strip()}")
        parts.append("## Literature notes relevant to the problem\n" + "\n\n".join(notes))
    if ctx.failures:
        fails = []
        for r in ctx.failures:
            why = (r.metrics or {}).get("error") or r.extra.get("failure") or r.analysis or "unknown"
            fails.append(f"- {r.id} {r.name}: {str(why)[:300]}")
        parts.append("## Recent failures (avoid repeating them)\n" + "\n".join(fails))
    for rej in ctx.rejections:
        txt = f"## Your earlier proposal '{rej.proposal.name}' was sent back: {rej.reason}"
        if rej.neighbour_id:
            txt += (f"\nIt is too close (similarity {rej.similarity:.2f}) to experiment {rej.neighbour_id} "
                    f"{rej.neighbour_name}: {rej.neighbour_motivation[:400]}\nPropose a clearly different idea.")
        parts.append(txt)
    parts.append("Propose the next experiment as JSON {name, motivation, code}.")
    return [{"role": "system", "content": _SYS_RESEARCHER}, {"role": "user", "content": "\n\n".join(parts)}]


def debugger_messages(code: str, error: str, log_tail: str, stage: str, motivation: str = "") -> list[dict[str, str]]:
    """The Debugger's chat: the failing code, the error and the end of the log."""
    user = (f"The mixer failed at the {stage} stage.\n\n## Idea\n{motivation.strip() or '(not given)'}\n\n"
            f"## Error\n{error.strip()}\n\n## Log tail\n```\n{log_tail.strip()[-3000:]}\n```\n\n"
            f"## Code\n```python\n{code.rstrip()}\n```\n\nReturn JSON {{explanation, code}}.")
    return [{"role": "system", "content": _SYS_DEBUGGER}, {"role": "user", "content": user}]


def analyst_messages(record: Any, parent: Any, siblings: list[Any], baselines: dict[str, dict[str, Any]],
                     ablations: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The Analyst's chat."""
    parts = ["## This experiment\n" + _rec_summary(record, code=True)]
    if parent is not None:
        parts.append("## Parent\n" + _rec_summary(parent))
    if siblings:
        parts.append("## Siblings (same parent)\n" + "\n\n".join(_rec_summary(s, limit=300) for s in siblings[:6]))
    parts.append("## Reference baselines\n" + _baselines_text(baselines))
    if ablations:
        parts.append("## One-component differences found (quasi-ablation)\n" + json.dumps(ablations, indent=1))
    parts.append("Write the analysis as JSON.")
    return [{"role": "system", "content": _SYS_ANALYST}, {"role": "user", "content": "\n\n".join(parts)}]


def judge_messages(record: Any, parent: Any, baselines: dict[str, dict[str, Any]],
                   nearest: tuple[str, float] | None) -> list[dict[str, str]]:
    """The Judge's chat."""
    parts = ["## Experiment\n" + _rec_summary(record, code=True)]
    if record.analysis:
        parts.append("## Analysis\n" + record.analysis.strip()[:2000])
    if parent is not None:
        parts.append("## Parent\n" + _rec_summary(parent))
    parts.append("## Reference baselines\n" + _baselines_text(baselines))
    if nearest:
        parts.append(f"Most similar earlier idea: experiment {nearest[0]} (similarity {nearest[1]:.2f}).")
    parts.append("Score it as JSON {performance, innovation, complexity, reason}.")
    return [{"role": "system", "content": _SYS_JUDGE}, {"role": "user", "content": "\n\n".join(parts)}]
