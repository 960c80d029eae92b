"""The console's key table, read from the bindings themselves (one source of truth).

:func:`key_rows` turns the ``BINDINGS`` of the classes that own keys into the rows the help
screen shows; the README's key table is checked against the same rows by a test.
"""

from __future__ import annotations

from typing import Iterable

from textual.binding import Binding
from textual.keys import key_to_character


def key_text(key: str) -> str:
    """A binding's key as typed: ``slash`` → ``/``, ``question_mark`` → ``?``, ``p`` → ``p``."""
    char = key_to_character(key)
    return char if char and char.isprintable() and len(char) == 1 else key


def key_rows(owners: Iterable[tuple[str, type]]) -> list[tuple[str, str, str]]:
    """``(key, what it does, where)`` for every binding of each ``(where, class)`` in ``owners``
    that has a tooltip (the long description); the footer shows the short ``description``."""
    rows = []
    for where, owner in owners:
        for b in owner.BINDINGS:
            if isinstance(b, Binding) and b.tooltip:
                for key in b.key.split(","):
                    rows.append((key_text(key.strip()), b.tooltip, where))
    return rows


def key_table_markdown(rows: Iterable[tuple[str, str, str]]) -> str:
    """The key rows as the Markdown table of the help screen and of the README."""
    lines = ["| key | action | where |", "|---|---|---|"]
    lines += [f"| `{k}` | {v} | {w} |" for k, v, w in rows]
    return "\n".join(lines)
