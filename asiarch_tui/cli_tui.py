"""``asiarch-tui [LAB]``: open the research console (the default command).

With no LAB it opens ``./lab``, creating a demo lab (built-in researcher, demo scale) on first
use, so a new user lands in a working console within seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

DEFAULT_LAB = Path("lab")


def fail(message: str, code: int = 2) -> None:
    """Print one clear paragraph to stderr and exit non-zero."""
    typer.secho(f"asiarch-tui: {message}", err=True, fg="red")
    raise typer.Exit(code)


def open_or_create_lab(path: Path, create_demo: bool = True):
    """Open the lab at ``path``; create a demo lab there if it does not exist yet."""
    from archive.lab import Lab, LabError

    try:
        if Lab.is_lab(path):
            return Lab.open(path)
        if not create_demo:
            fail(f"{path} is not a lab; create one with `asiarch-tui init {path}`")
        typer.secho(f"creating a demo lab in {path} (built-in researcher, demo scale)...", err=True)
        Lab.init(path, demo=True)
        return Lab.open(path)
    except LabError as exc:
        fail(str(exc))


def make_loop(lab, llm: Optional[str], mode: Optional[str], experiments: Optional[int]):
    """The research loop over ``lab`` with the CLI's overrides; clear errors for bad flags."""
    from agents.loop import Loop

    try:
        return Loop(lab, llm=llm, mode=mode, experiments=experiments)
    except ValueError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add the ``tui`` command (what ``asiarch-tui [LAB]`` runs)."""

    @app.command("tui")
    def tui(
        lab: Path = typer.Argument(DEFAULT_LAB, help="The lab folder (created as a demo lab if missing)."),
        llm: Optional[str] = typer.Option(
            None, "--llm", help="builtin | ollama:MODEL[@HOST] | openai:MODEL@URL (default: the lab's config)."),
        mode: Optional[str] = typer.Option(None, "--mode", help="autonomous | supervised (default: config)."),
        experiments: Optional[int] = typer.Option(None, "--experiments", help="Stop after N experiments (0: no limit)."),
        paused: bool = typer.Option(False, "--paused", help="Open without starting the loop (press p to start)."),
        browse: bool = typer.Option(False, "--browse", help="Browse the archive only; no loop runs."),
    ) -> None:
        """Open the research console on LAB (default ./lab, a demo lab made on first use)."""
        if mode is not None and mode not in ("autonomous", "supervised"):
            fail(f"--mode must be autonomous or supervised, not {mode!r}")
        if not sys.stdout.isatty() and not sys.stdin.isatty():
            fail("the console needs a terminal; for a headless run use `asiarch-tui run LAB --headless`")
        from asiarch_tui.app import ResearchConsole

        the_lab = open_or_create_lab(lab)
        loop = None if browse else make_loop(the_lab, llm, mode, experiments)
        llm_label = llm or the_lab.config.llm.researcher
        if loop is not None and loop.llm.backends:
            # before the screen opens: a missing model is a clear error here, not a dead console
            from agents.llm import ModelMissing

            typer.secho("negotiating with the LLM server(s)...", err=True)
            try:
                loop.llm.negotiate()
            except ModelMissing as exc:
                fail(f"{exc}. Check the model name in --llm or the lab's [llm] config.")
            for line in loop.llm.describe():
                typer.secho(line, err=True)
            llm_label = loop.llm.label()
        console = ResearchConsole(the_lab, loop, autostart=not paused, llm_label=llm_label)
        console.run()
