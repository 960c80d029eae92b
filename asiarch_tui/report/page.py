"""The report's HTML page: the figures with their captions, the top-10 table against the
baselines, the best design, what the winners drew on and the agents' tally."""

from __future__ import annotations

import datetime as _dt
import html
from collections import Counter
from pathlib import Path
from typing import Any

from asiarch_tui.report.data import FIGURES, ReportData, fitness_by_seed, fitness_spread, influences, is_num, top_rows

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#1d1d1d;line-height:1.45}
h1{margin-bottom:.2em} .meta{color:#555} figure{margin:1.5em 0} img{max-width:100%;border:1px solid #ddd}
figcaption{color:#444;font-size:.92em;margin-top:.3em}
table{border-collapse:collapse;font-size:.9em;margin:1em 0} th,td{border-bottom:1px solid #e3e3e3;
padding:.3em .6em;text-align:right} th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
tr.baseline td{color:#555;background:#f6f6f6} .better{color:#1a7f37;font-weight:600}
code{background:#f3f3f3;padding:0 .25em}
blockquote{white-space:pre-wrap;border-left:3px solid #ccc;margin:1em 0;padding:.2em 1em;color:#333}
"""


def _fmt(v: Any, nd: int = 3) -> str:
    return f"{float(v):.{nd}f}" if is_num(v) else "–"


def _table(data: ReportData) -> str:
    probes = sorted({p for _, m, _ in top_rows(data) for p in (m.get("probes") or {})})
    seed = data.baselines.get("deltanet", {})
    head = ["", "experiment", "fitness", "probe mean", "val bpb", "mixer params"] + probes
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for rank, r in enumerate(data.top(), 1):
        m = r.metrics or {}
        pm = m.get("probe_mean")
        better = data.beats_seed(r)
        cells = [str(rank), f"<code>{html.escape(r.id)}</code> {html.escape(r.name)}",
                 html.escape(fitness_spread(r)) + (f" [{r.fitness_interval[0]:.3f}, {r.fitness_interval[1]:.3f}]"
                                                   if r.fitness_interval else ""),
                 f"<span class='better'>{_fmt(pm)}</span>" if better else _fmt(pm), _fmt(m.get("val_bpb")),
                 str(m.get("mixer_params", "–"))]
        cells += [_fmt((m.get("probes") or {}).get(p), 2) for p in probes]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for name, m in sorted(data.baselines.items()):
        cells = ["", f"baseline: {html.escape(name)}", "", _fmt(m.get("probe_mean")), _fmt(m.get("val_bpb")),
                 str(m.get("mixer_params", "–"))]
        cells += [_fmt((m.get("probes") or {}).get(p), 2) for p in probes]
        out.append("<tr class='baseline'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_CAPTIONS = {
    "discovery": ("Fitness of every experiment in the order it was created (points by status), the best design "
                  "so far as the lower end of its 90% fitness interval over seeds (line; new bests labelled; best "
                  "moves only by the promotion rule), the measured seed (dashed) and, below, how many experiments "
                  "have beaten the seed so far by the promotion rule."),
    "lineage": ("Each experiment is a node joined to its parent; distance from the centre is the generation. "
                "Colour and size: fitness. Grey dots: failed, rejected or unmeasured experiments. Star: the best."),
    "components": ("The three fitness components per scored experiment and their rolling means: s_loss "
                   "(validation loss against the seed), s_score (probe score against the seed), s_judge "
                   "(the judge's rubric). A component that could not be measured counts 0.5 (hollow)."),
    "top": ("The ten fittest accepted experiments against the reference baselines measured at the same scale "
            "and seeds (lab/baselines); error bars are the standard deviation over seeds. In the table, a "
            "green probe mean marks a design that beats the seed by the promotion rule."),
    "influences": ("Operators and cognition entries recorded by the experiments on the winners' lines of descent "
                   "(the top ten and all their ancestors), as a share of those experiments, against their share "
                   "over the whole search. Counts are labelled."),
}


def render_html(data: ReportData, figures: dict[str, Path], out_dir: Path) -> str:
    """The report page (figures linked by relative path)."""
    counts = Counter(r.status for r in data.records)
    best = data.by_id().get(data.best_id) if data.best_id else None
    inf = influences(data)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>asiarch report: {html.escape(data.lab_path.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>asiarch report: {html.escape(data.lab_path.name)}</h1>",
        f"<p class='meta'>Lab <code>{html.escape(str(data.lab_path))}</code> · scale <b>{html.escape(data.scale)}</b> · "
        f"{len(data.records)} experiments: {counts.get('accepted', 0)} accepted, {counts.get('failed', 0)} failed, "
        f"{counts.get('rejected', 0)} rejected · generated {now}</p>",
    ]
    if best is not None:
        iv = best.fitness_interval
        verdict = ""
        if data.seed_seeds and best.extra.get("measures") is None:
            from agents.stats import promote

            verdict = " " + promote(fitness_by_seed(best), data.seed_seeds, what="the seed").text + "."
        parts.append(f"<p>Best: <code>{html.escape(best.id)}</code> <b>{html.escape(best.name)}</b>, fitness "
                     f"{html.escape(fitness_spread(best))}"
                     + (f", 90% interval [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "")
                     + (f" (the measured seed: {_fmt(data.seed_fitness)})" if data.seed_fitness is not None else "")
                     + "." + html.escape(verdict) + "</p>")
        if best.motivation:
            parts.append(f"<blockquote>{html.escape(best.motivation.strip()[:800])}</blockquote>")
    if not data.baselines:
        parts.append("<p class='meta'>No baselines cached for this scale yet (lab/baselines/; the loop measures "
                     "them on its first run).</p>")
    for key, title in FIGURES.items():
        if key not in figures:
            continue
        rel = figures[key].relative_to(out_dir).as_posix()
        parts.append(f"<h2>{html.escape(title)}</h2><figure><img src='{html.escape(rel)}' alt='{html.escape(title)}'>"
                     f"<figcaption>{html.escape(_CAPTIONS[key])}</figcaption></figure>")
        if key == "top":
            parts.append(_table(data))
        if key == "influences" and (inf["ops_w"] or inf["cog_w"]):
            items = [f"<li>operators: {html.escape(', '.join(f'{k} ({v})' for k, v in inf['ops_w'].most_common(8)))}</li>"]
            if inf["cog_w"]:
                cog = ", ".join(f"{data.entry_titles.get(k, k)} ({v})" for k, v in inf["cog_w"].most_common(8))
                items.append(f"<li>cognition entries: {html.escape(cog)}</li>")
            parts.append("<ul>" + "".join(items) + "</ul>")
    parts.append(agents_html(data.records))
    parts.append("</body></html>")
    return "\n".join(parts)


def agents_html(records: list[Any]) -> str:
    """The report's "Agents" section: per role, the steps the model answered vs the built-in
    fallback, model calls, time per call and tokens (empty when no step was recorded)."""
    from agents.llm_session import ROLES, format_tally, tally

    t = tally(records)
    if not t:
        return ""
    rows = []
    for role in ROLES:
        if role not in t:
            continue
        f = format_tally(t[role])
        specs = ", ".join(t[role]["specs"]) or "built-in"
        rows.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in (
            role, specs, f["answered"], f["calls"], f["time"], f["tokens"])) + "</tr>")
    return ("<h2>Agents</h2><p class='meta'>Steps answered by the model vs by the built-in agent after the model "
            "could not (unreachable, unusable reply, circuit open); time is mean / max seconds per model call, "
            "failed calls included; tokens in/out, ~ = estimated.</p><table><tr><th>role</th><th>model</th>"
            "<th>steps</th><th>calls</th><th>time</th><th>tokens</th></tr>" + "".join(rows) + "</table>")
