"""``asiarch-tui report [LAB] [--out DIR]``: the research report (PNG figures and an HTML page)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from asiarch_tui.cli_common import LabArg, LabOpt, fail, lab_path

console = Console()


def report(
    lab: LabArg = None,
    lab_opt: LabOpt = None,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default LAB/report)."),
) -> None:
    """Write the lab's report: the discovery curve, the lineage tree coloured by fitness, the
    fitness components over time, the top 10 against the baselines and what the winners drew on,
    as PNG figures and an index.html that shows them."""
    from archive.config import ConfigError
    from archive.lab import LabError
    from archive.lock import LabBusyError
    from archive.store import ArchiveError

    from asiarch_tui.report import build_report

    path = lab_path(lab, lab_opt)
    t0 = time.perf_counter()
    try:
        rep = build_report(path, out)
    except (LabError, ConfigError, ArchiveError, LabBusyError) as exc:
        fail(str(exc), 1)
    except OSError as exc:
        fail(f"cannot write the report to {out or path}: {exc.strerror or exc}", 1)
    c = rep.counts
    console.print(f"[green]report[/] {escape(str(rep.html))} ({time.perf_counter() - t0:.1f} s)")
    console.print(f"  {c.get('total', 0)} experiments: {c.get('accepted', 0)} accepted, {c.get('failed', 0)} failed, "
                  f"{c.get('rejected', 0)} rejected" + (f"; best {rep.best_id}" if rep.best_id else ""))
    for name, path in rep.figures.items():
        console.print(f"  {name:<11} {escape(str(path))}")


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to the CLI."""
    app.command("report")(report)
