"""Pieces shared by the CLI modules: the stderr console and the user-error guard."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

#: Where errors, notes and progress go (stdout stays for results, e.g. --json).
err_console = Console(stderr=True)


@contextmanager
def user_errors(*errors: type[BaseException], code: int = 1) -> Iterator[None]:
    """Turn the given exception types into one red ``error:`` paragraph and exit ``code``."""
    try:
        yield
    except errors as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code) from None
