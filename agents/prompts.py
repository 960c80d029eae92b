"""Prompts and reply schemas of the LLM agents (Researcher, Debugger, Analyst, Judge).

Each ``*_prompt`` function returns a :class:`Prompt` (a system message and user sections with
priorities, so that a prompt can be fitted into a small context by dropping its least important
parts first); ``*_messages`` returns the whole chat (system + user message); each ``*_SCHEMA`` is
the JSON schema passed to the backend as structured output. The system prompts start with "You are the
<Role>" (the scripted test server routes replies by it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "Prompt",
    "researcher_prompt",
    "debugger_prompt",
    "analyst_prompt",
    "judge_prompt",
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

def _text(description: str = "") -> dict[str, Any]:
    """A required text field: a non-empty string (an empty one is as unusable as a missing one)."""
    return {"type": "string", "minLength": 1, **({"description": description} if description else {})}


#: A judge score: an integer from 1 to 10. The enum lets a grammar-constrained server (llama.cpp's
#: ``json_object`` + schema) emit nothing else; the range says the same to validators and readers.
_SCORE: dict[str, Any] = {"type": "integer", "enum": list(range(1, 11)), "minimum": 1, "maximum": 10}

RESEARCHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": _text("short CamelCase name of the design"),
        "motivation": _text("what changes, why, and what it should improve"),
        "code": _text("the complete mixer file"),
    },
    "required": ["name", "motivation", "code"],
}

DEBUGGER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "explanation": _text("what was wrong and what you changed"),
        "code": _text("the complete repaired mixer file"),
    },
    "required": ["explanation", "code"],
}

ANALYST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "design_evaluation": _text(),
        "results": _text(),
        "expectation_vs_reality": _text(),
        "explanation": _text(),
        "insights": _text(),
        "problem": _text("one line: the main remaining problem, as symptoms"),
    },
    "required": ["design_evaluation", "results", "expectation_vs_reality", "explanation", "insights", "problem"],
}

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "performance": _SCORE,
        "innovation": _SCORE,
        "complexity": _SCORE,
        "reason": _text(),
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


@dataclass
class Prompt:
    """A chat prompt built of sections that can be dropped to fit a context window.

    ``sections`` are ``(priority, label, text)``: priority 0 is always kept; higher numbers are
    dropped first (ties: the later section first). ``fit(limit, count)`` drops sections until
    ``count(messages) <= limit`` and, if the kept sections are still too long, cuts the longest
    kept section in the middle; it returns the messages and the labels of what was trimmed.
    """

    system: str
    sections: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, priority: float, label: str, text: str) -> "Prompt":
        """Append a section; returns self."""
        self.sections.append((float(priority), label, text))
        return self

    def _messages(self, sections: list[tuple[float, str, str]]) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": "\n\n".join(t for _, _, t in sections)}]

    def messages(self) -> list[dict[str, str]]:
        """The whole chat (system + user message)."""
        return self._messages(self.sections)

    def fit(self, limit: int, count: Callable[[list[dict[str, str]]], int]) -> tuple[list[dict[str, str]], list[str]]:
        """The chat within ``limit`` tokens (as ``count`` measures) and what was trimmed."""
        kept = list(self.sections)
        trimmed: list[str] = []
        while count(self._messages(kept)) > limit:
            order = [i for i, s in enumerate(kept) if s[0] > 0]
            if not order:
                break
            i = max(order, key=lambda k: (kept[k][0], k))
            trimmed.append(kept[i][1])
            del kept[i]
        over = count(self._messages(kept)) - limit
        if over > 0 and kept:
            i = max(range(len(kept)), key=lambda k: len(kept[k][2]))
            pri, label, text = kept[i]
            per_token = max(1.0, len(text) / max(1, count([{"role": "user", "content": text}])))
            cut = int((over + 8) * per_token) + 40
            if cut < len(text) - 80:
                keep = len(text) - cut
                text = text[: keep // 2] + "\n…[trimmed to fit the context]…\n" + text[len(text) - keep // 2:]
                kept[i] = (pri, label, text)
                trimmed.append(f"{label} (cut by {cut} characters)")
        return self._messages(kept), trimmed


def researcher_prompt(ctx: Any) -> Prompt:
    """The Researcher's prompt for a ``ResearchContext`` (sections by priority)."""
    p = ctx.parent
    pr = Prompt(_SYS_RESEARCHER)
    pr.add(0, "header", f"Experiment {ctx.exp_id} at the {ctx.scale} scale"
           + (f"; mixer parameter budget {ctx.param_budget}" if ctx.param_budget else "") + ".")
    pr.add(0, "parent", "## Parent\n" + _rec_summary(p, code=True))
    if getattr(p, "analysis", ""):
        pr.add(3, "parent's analysis", "## Parent's analysis\n" + p.analysis.strip())
    if getattr(p, "problem", ""):
        pr.add(0, "problem", "## Problem to address\n" + p.problem.strip())
    if ctx.baselines:
        pr.add(4, "baselines", "## Reference baselines at this scale\n" + _baselines_text(ctx.baselines))
    for i, r in enumerate(ctx.references):
        head = "## Other designs in the lab (for ideas)\n" if i == 0 else ""
        pr.add(6 + i * 0.01, f"reference {r.id}", head + _rec_summary(r, limit=300))
    for i, (entry, score) in enumerate(ctx.cognition):
        head = "## Literature notes relevant to the problem\n" if i == 0 else ""
        pr.add(5 + i * 0.01, f"cognition {entry.id}", head + (
            f"### {entry.title} ({entry.year}; relevance {score:.2f})\n"
            f"When: {entry.scenario.strip()}\nMechanism: {entry.algorithm.strip()}"))
    if ctx.failures:
        fails = []
        for r in ctx.failures:
            why = (r.metrics or {}).get("error") or r.extra.get("failure") or r.analysis or "unknown"
            fails.append(f"- {r.id} {r.name}: {str(why)[:300]}")
        pr.add(7, "recent failures", "## Recent failures (avoid repeating them)\n" + "\n".join(fails))
    for rej in ctx.rejections:
        txt = f"## Your earlier proposal '{rej.proposal.name}' was sent back: {rej.reason}"
        if rej.neighbour_id:
            txt += (f"\nIt is too close (similarity {rej.similarity:.2f}) to experiment {rej.neighbour_id} "
                    f"{rej.neighbour_name}: {rej.neighbour_motivation[:400]}\nPropose a clearly different idea.")
        pr.add(0, f"rejection of {rej.proposal.name}", txt)
    pr.add(0, "instruction", "Propose the next experiment as JSON {name, motivation, code}.")
    return pr


def researcher_messages(ctx: Any) -> list[dict[str, str]]:
    """The Researcher's chat for a ``ResearchContext``."""
    return researcher_prompt(ctx).messages()


def debugger_prompt(code: str, error: str, log_tail: str, stage: str, motivation: str = "") -> Prompt:
    """The Debugger's prompt: the failing code, the error and the end of the log."""
    pr = Prompt(_SYS_DEBUGGER)
    pr.add(0, "stage", f"The mixer failed at the {stage} stage.")
    pr.add(2, "idea", f"## Idea\n{motivation.strip() or '(not given)'}")
    pr.add(0, "error", f"## Error\n{error.strip()}")
    pr.add(3, "log tail", f"## Log tail\n```\n{log_tail.strip()[-3000:]}\n```")
    pr.add(0, "code", f"## Code\n```python\n{code.rstrip()}\n```")
    pr.add(0, "instruction", "Return JSON {explanation, code}.")
    return pr


def debugger_messages(code: str, error: str, log_tail: str, stage: str, motivation: str = "") -> list[dict[str, str]]:
    """The Debugger's chat: the failing code, the error and the end of the log."""
    return debugger_prompt(code, error, log_tail, stage, motivation).messages()


def analyst_prompt(record: Any, parent: Any, siblings: list[Any], baselines: dict[str, dict[str, Any]],
                   ablations: list[dict[str, Any]]) -> Prompt:
    """The Analyst's prompt."""
    pr = Prompt(_SYS_ANALYST)
    pr.add(0, "experiment", "## This experiment\n" + _rec_summary(record, code=True))
    if parent is not None:
        pr.add(2, "parent", "## Parent\n" + _rec_summary(parent))
    for i, s in enumerate(siblings[:6]):
        head = "## Siblings (same parent)\n" if i == 0 else ""
        pr.add(5 + i * 0.01, f"sibling {s.id}", head + _rec_summary(s, limit=300))
    pr.add(3, "baselines", "## Reference baselines\n" + _baselines_text(baselines))
    if ablations:
        pr.add(1, "ablations", "## One-component differences found (quasi-ablation)\n" + json.dumps(ablations, indent=1))
    pr.add(0, "instruction", "Write the analysis as JSON.")
    return pr


def analyst_messages(record: Any, parent: Any, siblings: list[Any], baselines: dict[str, dict[str, Any]],
                     ablations: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The Analyst's chat."""
    return analyst_prompt(record, parent, siblings, baselines, ablations).messages()


def judge_prompt(record: Any, parent: Any, baselines: dict[str, dict[str, Any]],
                 nearest: tuple[str, float] | None) -> Prompt:
    """The Judge's prompt."""
    pr = Prompt(_SYS_JUDGE)
    pr.add(0, "experiment", "## Experiment\n" + _rec_summary(record, code=True))
    if record.analysis:
        pr.add(2, "analysis", "## Analysis\n" + record.analysis.strip()[:2000])
    if parent is not None:
        pr.add(3, "parent", "## Parent\n" + _rec_summary(parent))
    pr.add(4, "baselines", "## Reference baselines\n" + _baselines_text(baselines))
    if nearest:
        pr.add(1, "nearest idea", f"Most similar earlier idea: experiment {nearest[0]} (similarity {nearest[1]:.2f}).")
    pr.add(0, "instruction", "Score it as JSON {performance, innovation, complexity, reason}.")
    return pr


def judge_messages(record: Any, parent: Any, baselines: dict[str, dict[str, Any]],
                   nearest: tuple[str, float] | None) -> list[dict[str, str]]:
    """The Judge's chat."""
    return judge_prompt(record, parent, baselines, nearest).messages()
