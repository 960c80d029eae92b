"""Pieces shared by the CLI modules: the one error path, the choices of ``--mode`` and
``--scale``, and how a command is told its lab.

Errors. A bad option value that click can check (a choice, a range) is click's usage error
(exit 2, the allowed values listed). Everything else a user can get wrong ends in :func:`fail`:
one ``Error: ...`` paragraph on stderr and the exit code given; :func:`user_errors` sends the
exception types a command expects (a missing lab, a bad config, ...) through it.

The lab. Every command that works on a lab takes it as its last, optional positional argument
``LAB`` or as ``--lab/-l LAB`` (the same thing; both given and different is an error). Without
either, ``$ASIARCH_LAB`` names the lab, else ``./lab``. ``eval`` and ``baselines`` also run
without a lab: for them the lab is only what is given.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.text import Text

#: Where errors, notes and progress go (stdout stays for results, e.g. --json).
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``Error: message`` as one paragraph on stderr (never wrapped, never markup) and exit
    with ``code`` (2: a usage error; 1: the work itself failed; commands document others)."""
    err_console.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@contextmanager
def user_errors(*errors: type[BaseException], code: int = 1) -> Iterator[None]:
    """Send the given exception types through :func:`fail` with ``code``."""
    try:
        yield
    except errors as exc:
        fail(str(exc), code)


class Mode(str, Enum):
    """``--mode``: how the loop treats a checked proposal."""

    autonomous = "autonomous"
    supervised = "supervised"


class ScaleName(str, Enum):
    """``--scale``: the rungs of ``training.scales.SCALES`` (named here so that the CLI starts
    without importing torch; a test keeps the two lists equal)."""

    demo = "demo"
    probe = "probe"
    explore = "explore"
    verify_mini = "verify-mini"
    verify = "verify"


def value(choice: Enum | None) -> str | None:
    """The string of an Enum option (None stays None)."""
    return None if choice is None else str(choice.value)


def check_llm_spec(spec: Optional[str]) -> Optional[str]:
    """``--llm`` callback: a spec ``agents.llm.parse_llm_spec`` understands, else a usage error."""
    if spec is not None:
        from agents.llm import parse_llm_spec

        try:
            parse_llm_spec(spec)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return spec


def check_mixer_names(text: Optional[str]) -> Optional[tuple[str, ...]]:
    """``--baselines`` / ``--only`` callback: comma-separated reference mixer names (None when
    not given or empty), a usage error naming the unknown ones and the known."""
    if text is None:
        return None
    from training.mixers import REFERENCE_MIXERS

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in REFERENCE_MIXERS]
    if unknown:
        raise typer.BadParameter(f"unknown reference mixer(s) {', '.join(unknown)}; "
                                 f"choose from: {', '.join(REFERENCE_MIXERS)}.")
    return names or None


# ------------------------------------------------------------------------------ the lab

LAB_HELP = "The lab folder (default: $ASIARCH_LAB, else ./lab)."

#: ``[LAB]``, the last positional argument of a command on a lab.
LabArg = Annotated[Optional[Path], typer.Argument(metavar="LAB", show_default=False, help=LAB_HELP)]
#: ``--lab/-l LAB``, the same as the positional ``LAB``.
LabOpt = Annotated[Optional[Path], typer.Option("--lab", "-l", metavar="LAB", show_default=False,
                                                help="The lab folder, as LAB.")]


def default_lab() -> Path:
    """``$ASIARCH_LAB`` when set, else ``./lab``."""
    return Path(os.environ.get("ASIARCH_LAB") or "lab")


def lab_path(positional: Path | None, option: Path | None, *, default: bool = True) -> Path | None:
    """The lab a command was given as ``LAB`` or ``--lab``; when neither, :func:`default_lab`
    (or None when ``default`` is false: the command also runs without a lab)."""
    if positional is not None and option is not None and Path(positional) != Path(option):
        fail(f"the lab is given twice, as {positional} and as --lab {option}; give it once.", 2)
    chosen = positional if positional is not None else option
    if chosen is None and default:
        return default_lab()
    return chosen
