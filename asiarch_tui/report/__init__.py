"""Research report of a lab: PNG figures (matplotlib) and one HTML page that shows them.

``build_report(lab, out_dir)`` reads the archive (every experiment record) and the cached
baselines (``lab/baselines/<scale>.json``, written by the loop) and writes into ``out_dir``
(default ``lab/report``):

- ``discovery.png``: fitness of every experiment in order, the best so far, and the cumulative
  count of experiments that beat the measured seed (ASI-Arch's discovery curve);
- ``lineage.png``: the lineage tree, radial, nodes coloured by fitness (ASI-Arch's phylogenetic
  figure); failed and rejected experiments are small grey dots, the best is a star;
- ``components.png``: the fitness components (s_loss, s_score, s_judge) and the fitness over
  time, points and rolling means; hollow points are components that were not measured;
- ``top.png``: the 10 fittest experiments' probe accuracies (heatmap) and mean probe score (and
  validation bits per byte when the scale trains an LM) against the reference baselines;
- ``influences.png``: the operators and cognition entries the winners' lines of descent drew
  on, against how often the whole search used them;
- ``index.html``: the page (figures, the top-10 table with baselines, counts).

Only the lab's files are read; nothing is trained or evaluated. The package: ``data`` (reading
the lab), ``figures`` (the PNGs), ``page`` (the HTML).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from asiarch_tui.report.data import (FIGURES, TOP_N, Report, ReportData, collect, fitness_by_seed, fitness_spread,
                                     influences, winners_lines)
from asiarch_tui.report.figures import (figure_components, figure_discovery, figure_influences, figure_lineage,
                                        figure_top, lineage_layout)
from asiarch_tui.report.page import agents_html, render_html

__all__ = ["ReportData", "Report", "collect", "build_report", "FIGURES", "TOP_N", "lineage_layout", "influences",
           "winners_lines", "fitness_by_seed", "fitness_spread", "agents_html", "render_html"]


def build_report(lab: Any, out_dir: str | Path | None = None) -> Report:
    """Write the figures and ``index.html`` for ``lab`` (an open Lab, or a lab folder) into
    ``out_dir`` (default ``<lab>/report``). Returns what was written."""
    from archive.config import atomic_write_text

    opened = None
    if not hasattr(lab, "store"):
        from archive.lab import Lab

        lab = opened = Lab.open(Path(lab))
    try:
        data = collect(lab)
    finally:
        if opened is not None:
            opened.close()
    out = Path(out_dir) if out_dir is not None else data.lab_path / "report"
    out.mkdir(parents=True, exist_ok=True)
    makers = {"discovery": figure_discovery, "lineage": figure_lineage, "components": figure_components,
              "top": figure_top, "influences": figure_influences}
    figures = {name: fn(data, out / f"{name}.png") for name, fn in makers.items()}
    page = out / "index.html"
    atomic_write_text(page, render_html(data, figures, out))
    counts = dict(Counter(r.status for r in data.records))
    counts["total"] = len(data.records)
    return Report(page, figures, counts, data.best_id)
