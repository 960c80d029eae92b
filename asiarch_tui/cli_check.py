"""``asiarch-tui check FILE [--scale NAME] [--json]``: run the checker on a mixer file.

Prints a table of the seven checks (name, pass/fail, measured value, reason) and exits 0 only
when all pass (1 when a check fails, 2 on a usage error such as a missing file or unknown scale).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from asiarch_tui.cli_common import ScaleName, fail


def _is_reference(file: Path) -> bool:
    """The project's own reference mixers (training/mixers/*.py) are trusted code."""
    from training.sandbox import PROJECT_ROOT

    try:
        return file.resolve().parent == (PROJECT_ROOT / "training" / "mixers").resolve()
    except OSError:
        return False


def check_mixer_file(file: Path) -> None:
    """A usage error (exit 2) unless ``file`` is an existing file."""
    if not file.exists():
        fail(f"{file} does not exist. Give the path of a Python file that defines "
             "`class Mixer(nn.Module)` (for example training/mixers/deltanet.py).", 2)
    if not file.is_file():
        fail(f"{file} is not a file. Give the path of one Python file that defines `class Mixer(nn.Module)`.", 2)


def _print_report(file: Path, report: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=f"check {file.name} (scale {report.scale}, isolation {report.isolation or 'static only'})")
    table.add_column("#", justify="right")
    table.add_column("check")
    table.add_column("result")
    table.add_column("value", overflow="fold")
    table.add_column("reason", overflow="fold")
    for i, c in enumerate(report.checks, 1):
        value = "" if c.value is None else (f"{c.value:.3g}" if isinstance(c.value, float) else str(c.value))
        table.add_row(str(i), c.name, "[green]PASS[/green]" if c.passed else "[red]FAIL[/red]",
                      escape(value), escape(c.reason))  # reasons may quote candidate text
    console.print(table)
    verdict = "[green]all checks passed[/green]" if report.passed else "[red]check failed[/red]"
    console.print(f"{verdict} in {report.duration_s:.1f} s")


def check(
    file: Path = typer.Argument(..., help="The mixer file to check (defines class Mixer(nn.Module))."),
    scale: ScaleName = typer.Option(ScaleName.probe, "--scale",
                                    help="Scale whose width, heads and parameter budget apply."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream the sandbox child's log lines."),
    wall: float = typer.Option(150.0, "--wall-seconds", help="Wall-time limit of the sandboxed run."),
    unsafe_no_sandbox: bool = typer.Option(
        False, "--unsafe-no-sandbox",
        help="Where bubblewrap is missing, run the file anyway with rlimits and an in-process guard only "
             "(no OS boundary: only for code you trust)."),
) -> None:
    """Check a candidate mixer in the sandbox: contract, allow-list, budget, forward/backward,
    causality, sub-quadratic cost, determinism. Exit 0 only if every check passes."""
    from rich.console import Console
    from rich.markup import escape

    from training.checker import CheckError, check_file, report_json
    from training.sandbox import Limits

    check_mixer_file(file)
    err = Console(stderr=True)
    on_line = (lambda line: err.print(f"[dim]| {escape(line)}[/dim]", markup=True, highlight=False)) if verbose else None
    try:
        report = check_file(file, scale=scale.value, on_line=on_line,
                            limits=Limits(wall_s=wall, unsafe_no_sandbox=unsafe_no_sandbox), trusted=_is_reference(file))
    except CheckError as exc:
        fail(str(exc), 2)
    if as_json:
        sys.stdout.write(report_json(report) + "\n")
    else:
        _print_report(file, report)
    raise typer.Exit(0 if report.passed else 1)


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to ``app``."""
    app.command("check")(check)
