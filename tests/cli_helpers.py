"""Reading what the CLI printed, through typer's test runner."""

from __future__ import annotations

import re

_BOX = re.compile(r"[│╭╮╰╯─]")


def cli_text(result) -> str:
    """The output (stdout and stderr) with rich's line wrapping and typer's error panel undone:
    box characters dropped, whitespace runs joined to one space."""
    return " ".join(_BOX.sub(" ", result.output).split())
