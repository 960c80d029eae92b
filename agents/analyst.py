"""The Analyst: what happened in an experiment, and why (docs/ARCHITECTURE.md step 7).

It compares the experiment with its parent, its siblings and the reference baselines, finds the
component that made a difference by comparing siblings that differ in one lever (a
quasi-ablation), and writes the analysis — design evaluation, results, expectation vs reality,
explanation, insights — plus a one-line problem statement that queries the cognition base next
time. ``BuiltinAnalyst`` is rule-based over the metrics; ``LLMAnalyst`` asks a chat model (with
the quasi-ablation computed here in its prompt) and falls back to the builtin one when the
server is unavailable.
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass
from typing import Any

from agents import prompts
from agents.llm import CallRecorder, ChatBackend, LLMError
from agents.llm_session import RoleSession, fallback

__all__ = ["Analysis", "init_defaults", "components_of", "quasi_ablation", "BuiltinAnalyst", "LLMAnalyst"]

#: Probe names grouped by what they test (used in problem statements).
_RECALL = ("mqar", "noisy_recall", "fuzzy_recall", "memorization")


@dataclass
class Analysis:
    """The Analyst's output; ``text()`` is the markdown kept as ``analysis.md``."""

    design_evaluation: str
    results: str
    expectation_vs_reality: str
    explanation: str
    insights: str
    problem: str
    ablations: list[dict[str, Any]]
    analyst: str = "builtin"

    def text(self) -> str:
        """The analysis as markdown."""
        out = [
            "## Design evaluation\n" + self.design_evaluation.strip(),
            "## Results\n" + self.results.strip(),
            "## Expectation vs reality\n" + self.expectation_vs_reality.strip(),
            "## Explanation\n" + self.explanation.strip(),
            "## Insights\n" + self.insights.strip(),
            "## Problem\n" + self.problem.strip(),
        ]
        return "\n\n".join(out) + "\n"


def init_defaults(code: str) -> dict[str, Any]:
    """The literal keyword defaults of ``Mixer.__init__`` in a mixer file (e.g. ``conv_size: 4``)."""
    try:
        tree = ast.parse(code or "")
    except SyntaxError:
        return {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Mixer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    pos = args.args[len(args.args) - len(args.defaults):] if args.defaults else []
                    pairs = list(zip(pos, args.defaults)) + [
                        (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                    out: dict[str, Any] = {}
                    for a, d in pairs:
                        try:
                            out[a.arg] = ast.literal_eval(d)
                        except ValueError:
                            continue
                    return out
    return {}


def components_of(rec: Any) -> dict[str, Any]:
    """The design components of a record: its genome if it has one; else one key per operator;
    else its hyper-parameters (``extra["hyperparameters"]`` or the literal keyword defaults of
    ``Mixer.__init__``)."""
    if getattr(rec, "genome", None):
        return dict(rec.genome)
    ops = [o for o in (getattr(rec, "operators", None) or []) if o != "seed"]
    if ops:
        return {f"op:{o}": True for o in ops}
    extra = getattr(rec, "extra", {}) or {}
    if extra.get("hyperparameters"):
        return dict(extra["hyperparameters"])
    return init_defaults(getattr(rec, "code", "") or "")


def _score(rec: Any) -> float | None:
    m = rec.metrics or {}
    v = m.get("probe_mean")
    return float(v) if isinstance(v, (int, float)) else None


def quasi_ablation(record: Any, siblings: list[Any]) -> list[dict[str, Any]]:
    """Siblings that differ from ``record`` in exactly one component, with the effect of it.

    Each item: ``{sibling, component, this, other, delta_probe_mean, delta_val_loss,
    delta_fitness}`` (this minus the sibling; None where unmeasured).
    """
    mine = components_of(record)
    out: list[dict[str, Any]] = []
    if not mine:
        return out
    for sib in siblings:
        if sib.id == record.id or sib.status != "accepted":
            continue
        theirs = components_of(sib)
        if not theirs:
            continue
        keys = set(mine) | set(theirs)
        diff = [k for k in sorted(keys) if mine.get(k) != theirs.get(k)]
        if len(diff) != 1:
            continue
        k = diff[0]

        def d(a: Any, b: Any) -> float | None:
            return round(a - b, 4) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None

        out.append({
            "sibling": sib.id, "component": k, "this": mine.get(k), "other": theirs.get(k),
            "delta_probe_mean": d(_score(record), _score(sib)),
            "delta_val_loss": d((record.metrics or {}).get("val_loss"), (sib.metrics or {}).get("val_loss")),
            "delta_fitness": d(record.fitness, sib.fitness),
        })
    return out


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"


class BuiltinAnalyst:
    """Rule-based analysis over the metrics (no LLM)."""

    spec = "builtin"

    def analyse(self, record: Any, parent: Any, siblings: list[Any], baselines: dict[str, dict[str, Any]],
                recorder: CallRecorder | None = None) -> Analysis:
        """Analyse ``record`` against ``parent``, ``siblings`` and ``baselines``."""
        t0 = time.perf_counter()
        m = record.metrics or {}
        pm = (parent.metrics or {}) if parent is not None else {}
        ablations = quasi_ablation(record, siblings)
        status = m.get("status", "n/a")
        probes: dict[str, Any] = m.get("probes") or {}
        pprobes: dict[str, Any] = pm.get("probes") or {}

        design = (f"{record.name} derives from {parent.id} {parent.name}." if parent is not None
                  else f"{record.name} is a root design.")
        comps = components_of(record)
        pcomps = components_of(parent) if parent is not None else {}
        changed = [k for k in sorted(set(comps) | set(pcomps)) if comps.get(k) != pcomps.get(k)]
        if changed:
            design += " Changed components: " + ", ".join(f"{k} {pcomps.get(k)!r} → {comps.get(k)!r}" for k in changed) + "."
        if m.get("mixer_params") is not None:
            design += f" Mixer parameters: {m['mixer_params']}."

        res = [f"Status {status}; probe mean {_fmt(m.get('probe_mean'))} (parent {_fmt(pm.get('probe_mean'))})"]
        if m.get("val_loss") is not None or pm.get("val_loss") is not None:
            res.append(f"validation loss {_fmt(m.get('val_loss'))} nats/byte (parent {_fmt(pm.get('val_loss'))})")
        per_probe = []
        for name, acc in probes.items():
            pa = pprobes.get(name)
            if isinstance(acc, (int, float)) and isinstance(pa, (int, float)):
                per_probe.append((name, acc - pa, acc))
        if per_probe:
            res.append("per probe vs parent: " + ", ".join(f"{n} {d:+.3f}" for n, d, _ in per_probe))
        ranked = []
        for bname, bm in sorted(baselines.items()):
            if isinstance(bm.get("probe_mean"), (int, float)):
                ranked.append((bname, bm["probe_mean"]))
        if ranked and isinstance(m.get("probe_mean"), (int, float)):
            beats = [b for b, v in ranked if m["probe_mean"] > v]
            res.append(f"probe mean above {len(beats)}/{len(ranked)} baselines"
                       + (f" ({', '.join(beats)})" if beats else ""))
        res.extend(_against_seed(m, baselines))
        results = "; ".join(res) + "."

        dm = (m.get("probe_mean") - pm.get("probe_mean")) if isinstance(m.get("probe_mean"), (int, float)) \
            and isinstance(pm.get("probe_mean"), (int, float)) else None
        if status != "ok":
            evr = f"The run did not finish normally ({m.get('stop_reason') or m.get('error') or status})."
        elif dm is None:
            evr = "No comparable measurement with the parent."
        elif dm > 0.01:
            evr = f"The change improved the probes by {dm:+.3f}, as intended."
        elif dm < -0.01:
            evr = f"The change was expected to help but the probes fell by {dm:+.3f}."
        else:
            evr = f"The change made no clear difference ({dm:+.3f})."

        if ablations:
            best = max(ablations, key=lambda a: abs(a["delta_probe_mean"] or 0.0))
            explanation = (f"Against sibling {best['sibling']}, which differs only in {best['component']} "
                           f"({best['other']!r} there, {best['this']!r} here), the probe mean differs by "
                           f"{_fmt(best['delta_probe_mean'])}: {best['component']} is the component that "
                           "made the difference.")
        elif per_probe:
            worst = min(per_probe, key=lambda x: x[1])
            top = max(per_probe, key=lambda x: x[1])
            explanation = (f"The largest gain is on {top[0]} ({top[1]:+.3f}) and the largest loss on "
                           f"{worst[0]} ({worst[1]:+.3f}); no sibling differs in one component only, so "
                           "the cause is not isolated.")
        else:
            explanation = "Not enough measurements to isolate a cause."

        weak = sorted(((n, a) for n, a in probes.items() if isinstance(a, (int, float))), key=lambda x: x[1])
        if status != "ok":
            problem = f"training {status}: {(m.get('stop_reason') or m.get('error') or '')[:120]}"
        elif weak:
            names = [n for n, a in weak[:2]]
            kind = "recall" if any(n in _RECALL for n in names) else "sequence"
            problem = (f"{kind} probes {' and '.join(names)} stay low ({', '.join(_fmt(a) for _, a in weak[:2])}) "
                       "while other probes are learned: the state fails to retrieve stored associations")
        elif m.get("val_loss") is not None:
            problem = f"validation loss {_fmt(m['val_loss'])} nats/byte lags the best baseline"
        else:
            problem = "no measurements to diagnose"
        insights = ("Keep " + ", ".join(k for k in changed) + "." if changed and dm is not None and dm > 0.01
                    else "Try a different lever next." if changed else "Start from a measured design.")
        a = Analysis(design, results, evr, explanation, insights, problem, ablations, analyst="builtin")
        if recorder is not None:
            recorder.record("analyst", "builtin", f"analyse {record.id} vs parent and {len(siblings)} siblings",
                            a.text(), time.perf_counter() - t0, None, None)
        return a


def _against_seed(m: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> list[str]:
    """"Beats the seed" by the promotion rule (agents.stats), per metric: the probe mean (higher
    is better) and the validation loss (lower is better), seed by seed against the seed design."""
    from agents.seeds import versus
    from agents.stats import format_spread

    try:
        from training.mixers import SEED_MIXER
    except ImportError:  # pragma: no cover
        return []
    ref = baselines.get(SEED_MIXER)
    if not ref or not m:
        return []
    out = []
    spread = m.get("spread") or {}
    for key, label, higher in (("probe_mean", "probe mean", True), ("val_loss", "validation loss", False)):
        if not isinstance(m.get(key), (int, float)) or not isinstance(ref.get(key), (int, float)):
            continue
        s = spread.get(key) or {}
        v = versus(m, ref, key, higher)
        shown = format_spread(m.get(key), s.get("std"), s.get("n") or m.get("n_seeds"))
        word = {"promoted": "beats the seed", "tied": "tied with the seed (within noise)",
                "below": "below the seed", "single_seed": "not compared with the seed (one seed)",
                "unmeasured": "not compared with the seed"}[v.outcome]
        out.append(f"{label} {shown} {word}" + (f" ({v.rule} rule)" if v.promoted else ""))
    return out


class LLMAnalyst:
    """The Analyst backed by a chat model; builtin for a step when the server is unavailable."""

    def __init__(self, backend: ChatBackend, retries: int = 2, backoff_s: float = 1.0,
                 session: RoleSession | None = None) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.session = session or RoleSession("analyst", backend, retries=retries, backoff_s=backoff_s)
        self.fallback = BuiltinAnalyst()

    def analyse(self, record: Any, parent: Any, siblings: list[Any], baselines: dict[str, dict[str, Any]],
                recorder: CallRecorder | None = None) -> Analysis:
        """Ask the model; when it cannot answer (server unavailable, reply unusable after its
        correction round, circuit open) the builtin analyst answers this step."""
        rec = recorder or CallRecorder()
        ablations = quasi_ablation(record, siblings)
        pr = prompts.analyst_prompt(record, parent, siblings, baselines, ablations)
        try:
            obj = self.session.ask(rec, pr, prompts.ANALYST_SCHEMA)
        except LLMError as exc:
            fallback(rec, "analyst", self.spec, exc)
            return self.fallback.analyse(record, parent, siblings, baselines, rec)
        rec.step("analyst", "llm", self.spec)
        problem = " ".join(str(obj["problem"]).split())[:300]
        return Analysis(str(obj["design_evaluation"]), str(obj["results"]), str(obj["expectation_vs_reality"]),
                        str(obj["explanation"]), str(obj["insights"]), problem, ablations, analyst=self.spec)
