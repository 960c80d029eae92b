"""``asiarch-tui verify [LAB] [--top K] [--scale verify-mini|verify] [--seeds N] [--json]``: promote
the lab's top designs to a higher scale (``agents.climb``).

The top ``K`` designs at the lab's scale by the promotion rule are re-trained and evaluated at
``--scale`` (default ``verify``; ``verify-mini`` runs the same code path on CPU in about a minute
per run) on ``--seeds`` seeds (at least 2) in the sandbox, and each result is committed as a child
of its design with a ``Scale:`` trailer (``git log`` shows the climb). The seed is measured there
first when it has not been (the yardstick). Exit 0 when every design was evaluated completely,
1 when one failed or nothing could be promoted, 2 for a bad scale.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asiarch_tui.cli_archive import _ERRORS, _open
from asiarch_tui.cli_common import LabArg, LabOpt, ScaleName, err_console, lab_path, user_errors


def _f(v: object, digits: int = 4) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}f}"
    return "–"


def verify_cmd(
    lab: LabArg = None,
    lab_opt: LabOpt = None,
    top: int = typer.Option(2, "--top", "-k", min=1, help="How many of the lab's top designs to promote."),
    scale: ScaleName = typer.Option(ScaleName.verify, "--scale",
                                    help="verify-mini (CPU, about a minute a run) or verify (GPU)."),
    seeds: int = typer.Option(2, "--seeds", min=2, help="Seeds per design at the higher scale (at least 2)."),
    exp: list[str] = typer.Option([], "--id", help="Promote these experiments instead of the top K (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Run a GPU scale even without a GPU."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per design (a list)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream the training log lines."),
) -> None:
    """Re-evaluate the lab's top designs (by the promotion rule) at a higher scale on >= 2 seeds
    and commit each result as a child commit with a `Scale:` trailer."""
    from agents.climb import ClimbError, verify_lab
    from asiarch_tui.cli_engine import check_gpu_scale

    path = lab_path(lab, lab_opt)
    check_gpu_scale(scale.value, force)
    with user_errors(*_ERRORS, ClimbError):
        opened = _open(path)
        say = (lambda line: err_console.print(f"[dim]| {escape(line)}[/dim]", highlight=False)) if verbose else \
            (lambda line: err_console.print(escape(line), highlight=False) if line.startswith("[verify]") else None)
        results = verify_lab(opened, top=top, scale=scale.value, seeds=seeds, on_line=say, ids=list(exp) or None)
        opened.close()
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    else:
        t = Table(title=f"verify {path} at {scale.value} ({seeds} seeds)")
        for col in ("design", "name", "child", "status", "fitness", "interval", "benchmark", "tasks"):
            t.add_column(col)
        for r in results:
            iv = f"[{_f(r.interval[0])}, {_f(r.interval[1])}]" if r.interval else "–"
            tasks = ", ".join(f"{k} {_f(v, 3)}" for k, v in r.tasks.items()) or "–"
            t.add_row(r.design, escape(r.name), r.child or "–", r.status or escape(r.skipped), _f(r.fitness), iv,
                      _f(r.benchmark), escape(tasks))
        Console().print(t)
    bad = [r for r in results if not r.skipped and (r.status != "ok" or r.child is None)]
    raise typer.Exit(1 if bad or not results else 0)


def register(app: typer.Typer) -> None:
    """Add ``verify`` to the ``asiarch-tui`` app."""
    app.command("verify")(verify_cmd)
