"""``asiarch-tui [LAB]``: open the research console (the default command).

With no LAB it opens ``$ASIARCH_LAB`` or ``./lab``, creating a demo lab (built-in researcher,
demo scale) on first use, so a new user lands in a working console within seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from asiarch_tui.cli_common import LabArg, LabOpt, Mode, check_llm_spec, fail, lab_path, value


def open_or_create_lab(path: Path, create_demo: bool = True) -> Any:
    """Open the lab at ``path``; create a demo lab there if it does not exist yet."""
    from archive.config import ConfigError
    from archive.lab import Lab, LabError

    try:
        if Lab.is_lab(path):
            return Lab.open(path)
        if not create_demo:
            fail(f"{path} is not a lab; create one with `asiarch-tui init {path}`", 2)
        typer.secho(f"creating a demo lab in {path} (built-in researcher, demo scale)...", err=True)
        Lab.init(path, demo=True)
        return Lab.open(path)
    except (LabError, ConfigError) as exc:
        fail(str(exc), 2)


def make_loop(lab: Any, llm: Optional[str], mode: Optional[str], experiments: Optional[int]) -> Any:
    """The research loop over ``lab`` with the CLI's overrides; clear errors for bad flags."""
    from agents.loop import Loop

    try:
        return Loop(lab, llm=llm, mode=mode, experiments=experiments)
    except ValueError as exc:
        fail(str(exc), 2)


def _negotiate(loop: Any) -> str:
    """Before the screen opens: a missing model is a clear error here, not a dead console.
    Returns the negotiated label of the LLM backends."""
    from agents.llm import ModelMissing

    typer.secho("negotiating with the LLM server(s)...", err=True)
    try:
        loop.llm.negotiate()
    except ModelMissing as exc:
        fail(f"{exc}. Check the model name in --llm or the lab's [llm] config.", 2)
    for line in loop.llm.describe():
        typer.secho(line, err=True)
    return loop.llm.label()


def tui(
    lab: LabArg = None,
    lab_opt: LabOpt = None,
    llm: Optional[str] = typer.Option(
        None, "--llm", callback=check_llm_spec,
        help="builtin | ollama:MODEL\\[@HOST] | openai:MODEL@URL (default: the lab's config)."),
    mode: Optional[Mode] = typer.Option(None, "--mode", help="Default: the lab's config."),
    experiments: Optional[int] = typer.Option(None, "--experiments", min=0,
                                              help="Stop after N experiments (0: no limit)."),
    paused: bool = typer.Option(False, "--paused", help="Open without starting the loop (press p to start)."),
    browse: bool = typer.Option(False, "--browse", help="Browse the archive only; no loop runs."),
) -> None:
    """Open the research console on LAB (a demo lab is made there on first use)."""
    path = lab_path(lab, lab_opt)
    if not sys.stdout.isatty() and not sys.stdin.isatty():
        fail("the console needs a terminal; for a headless run use `asiarch-tui run LAB --headless`", 2)
    from asiarch_tui.app import ResearchConsole

    the_lab = open_or_create_lab(path)
    loop = None if browse else make_loop(the_lab, llm, value(mode), experiments)
    llm_label = llm or the_lab.config.llm.researcher
    if loop is not None and loop.llm.backends:
        llm_label = _negotiate(loop)
    ResearchConsole(the_lab, loop, autostart=not paused, llm_label=llm_label).run()


def register(app: typer.Typer) -> None:
    """Add the ``tui`` command (what ``asiarch-tui [LAB]`` runs)."""
    app.command("tui")(tui)
