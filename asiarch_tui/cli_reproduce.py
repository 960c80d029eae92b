"""``asiarch-tui reproduce ID [LAB] [--seeds N] [--json]``: re-run an experiment's
evaluation in the sandbox from its commit and compare with the record (``agents.repro``).

Exit 0 when every metric reproduced (within the recorded interval over seeds, or within 1% of the
recorded value on the same seed), 1 otherwise (including an experiment that cannot be re-run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asiarch_tui.cli_archive import _ERRORS, _open, _resolve_id
from asiarch_tui.cli_common import LabArg, LabOpt, err_console, lab_path, user_errors


def _f(v: object, digits: int = 4) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}f}"
    return "–"


def reproduce_cmd(
    exp: str = typer.Argument(..., help="Experiment id (3 or 0003), tag, or best."),
    lab: LabArg = None,
    lab_opt: LabOpt = None,
    seeds: int | None = typer.Option(None, "--seeds", min=1,
                                     help="Seeds to re-run (default: the recorded ones; more continue the schedule)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream the training log lines."),
) -> None:
    """Re-run an experiment's evaluation (its commit's mixer.py, recorded scale, seeds and
    threads) in the sandbox; print recorded vs reproduced per metric. Exit 0 when every metric
    reproduced, 1 otherwise."""
    from agents.repro import ReproduceError, reproduce

    with user_errors(*_ERRORS, ReproduceError):
        opened = _open(lab_path(lab, lab_opt))
        exp_id = _resolve_id(opened, exp)
        run_dir = Path(opened.path) / "runs" / "reproduce" / exp_id
        on_line = (lambda line: err_console.print(f"[dim]| {escape(line)}[/dim]", highlight=False)) if verbose else None
        if not as_json:
            err_console.print(f"re-running experiment {exp_id} in the sandbox…", highlight=False)
        report = reproduce(opened.store, exp_id, run_dir, n_seeds=seeds, on_line=on_line)
        opened.close()
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        console = Console()
        t = Table(title=f"reproduce {report.exp_id} (seeds {', '.join(map(str, report.seeds))})")
        for col in ("metric", "recorded", "interval", "reproduced", "Δ / std", "same seed ≤1%", "ok"):
            t.add_column(col, justify="right" if col != "metric" else "left")
        for c in report.checks:
            iv = f"[{_f(c.interval[0])}, {_f(c.interval[1])}]" if c.interval else "–"
            same = "–" if not c.per_seed else ("yes" if c.within_tolerance else "no")
            t.add_row(c.metric, _f(c.recorded), iv, _f(c.reproduced), _f(c.sigmas, 2), same,
                      "[green]yes[/]" if c.ok else "[red]no[/]")
        console.print(t)
        for r in report.runs:
            if r.get("status") != "ok":
                console.print(f"[red]seed {r.get('seed')}: {r.get('status')}[/] "
                              f"{escape(str(r.get('error') or r.get('stop_reason') or ''))}")
        for w in report.warnings:
            err_console.print(f"[yellow]note:[/] {escape(w)}", highlight=False)
        console.print("[green]reproduced[/]" if report.ok else "[red]not reproduced[/]")
    raise typer.Exit(0 if report.ok else 1)


def register(app: typer.Typer) -> None:
    """Add ``reproduce`` to the ``asiarch-tui`` app."""
    app.command("reproduce")(reproduce_cmd)
