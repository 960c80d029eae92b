"""The ``asiarch-tui`` command line (typer).

Each subsystem keeps its commands in its own module (``cli_*.py``) that exposes
``register(app: typer.Typer) -> None``; this module assembles them.
``asiarch-tui [LAB]`` with no subcommand opens the console on LAB (default ``$ASIARCH_LAB``,
else ``./lab``; every command names its lab the same way, see ``asiarch_tui.cli_common``).
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="asiarch-tui",
    help="asiarch: a terminal research console in which agents discover neural-network architectures.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Modules that contribute commands.
COMMAND_MODULES = (
    "asiarch_tui.cli_engine",
    "asiarch_tui.cli_check",
    "asiarch_tui.cli_archive",
    "asiarch_tui.cli_corpus",
    "asiarch_tui.cli_run",
    "asiarch_tui.cli_report",
    "asiarch_tui.cli_reproduce",
    "asiarch_tui.cli_verify",
    "asiarch_tui.cli_tui",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _command_names() -> set[str]:
    names = set()
    for cmd in app.registered_commands:
        names.add(cmd.name or cmd.callback.__name__.replace("_", "-"))
    for group in app.registered_groups:
        if group.name:
            names.add(group.name)
    return names


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script. ``asiarch-tui [LAB] [--llm ...]`` opens the console."""
    args = list(sys.argv[1:] if argv is None else argv)
    names = _command_names()
    if "tui" in names and (not args or (args[0] not in names and args[0] not in ("--help", "-h"))):
        args = ["tui", *args]
    app(args=args, prog_name="asiarch-tui")


if __name__ == "__main__":
    main()
