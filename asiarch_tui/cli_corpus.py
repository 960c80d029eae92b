"""Cognition-base commands: ``corpus search QUERY``, ``corpus show ID``, ``corpus list``,
``corpus check``, ``corpus index``."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from archive.embed import EmbedderUnavailable
from asiarch_tui.cli_common import err_console, user_errors, value
from archive.vectors import VectorIndexError
from corpus.schema import LEVERS, Entry, EntryError, load_entries

console = Console()

corpus_app = typer.Typer(
    name="corpus",
    help="The cognition base: entries on the papers of the field, searchable by problem statement.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_ERRORS = (EntryError, EmbedderUnavailable, VectorIndexError, ValueError, OSError)




#: ``--lever``: one of the cognition base's levers (click lists them on a bad value).
Lever = Enum("Lever", {name: name for name in LEVERS}, type=str)


def _flat(text: str) -> str:
    """Entry text reflowed for the terminal (the files wrap lines at ~95 columns)."""
    return " ".join(text.split())


def _first_sentence(text: str, limit: int = 140) -> str:
    flat = " ".join(text.split())
    cut = flat.split(". ")[0]
    return cut if len(cut) <= limit else cut[: limit - 1] + "…"


@corpus_app.command("search")
def search(
    query: str = typer.Argument(..., help="The problem statement, e.g. \"recall probes fail while loss is fine\"."),
    k: int = typer.Option(5, "-k", "--top", min=1, max=100, help="How many entries to show."),
    lever_opt: Optional[Lever] = typer.Option(None, "--lever", help="Only entries tagged with this lever."),
    embedder: Optional[str] = typer.Option(None, "--embedder",
                                           help="Embedder spec: fastembed (default), hash, or ollama:MODEL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Rank cognition entries by relevance to QUERY (scores, levers)."""
    lever = value(lever_opt)
    from corpus.retrieval import CognitionBase

    with user_errors(*_ERRORS):
        if not query.strip():
            raise ValueError("the query is empty; describe the problem, e.g. \"unstable at long lengths\"")
        with err_console.status("Loading the cognition base (the first run embeds every entry; later runs use the cache)…"):
            base = CognitionBase.load(embedder)
            hits = base.search(query, k=k, lever=lever)
    if as_json:
        print(json.dumps([{"id": e.id, "title": e.title, "year": e.year, "score": round(s, 4),
                           "levers": list(e.levers)} for e, s in hits], indent=2))
        return
    table = Table(title=f"Cognition entries for: {escape(query)}", title_justify="left",
                  caption=f"{len(base)} entries, embedder {base.embedder.name}"
                  + (f", lever {lever}" if lever else ""), caption_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("score", justify="right", style="bold cyan")
    table.add_column("id", style="green", no_wrap=True)
    table.add_column("entry", ratio=3)
    table.add_column("levers", style="magenta", ratio=1)
    for i, (e, s) in enumerate(hits, 1):
        cell = Text.assemble((f"{e.title} ({e.year})", "bold"), "\n", (_first_sentence(e.scenario), "dim"))
        table.add_row(str(i), f"{s:.3f}", e.short_id, cell, "\n".join(e.levers))
    if not hits:
        console.print("No entries match" + (f" with lever {lever}." if lever else "."))
        return
    console.print(table)


def _entry_panel(e: Entry) -> Panel:
    head = Text.assemble((e.title, "bold"), "\n", (", ".join(e.authors), "dim"), f"  ·  {e.year}  ·  ",
                         (e.id, "green"))
    levers = Text.assemble(("levers: ", "bold"), (", ".join(e.levers), "magenta"))
    parts: list = [head, levers]
    if e.related:
        parts.append(Text.assemble(("related: ", "bold"), ", ".join(e.related)))
    for name in ("scenario", "algorithm", "history"):
        parts += [Text(""), Text(name.capitalize(), style="bold underline"), Text(_flat(getattr(e, name)))]
    parts += [Text(""), Text("Expected effects", style="bold underline"),
              Text.assemble(("probes: ", "bold"), _flat(e.expected_effects["probes"])),
              Text.assemble(("loss: ", "bold"), _flat(e.expected_effects["loss"]))]
    return Panel(Group(*parts), title=e.short_id, title_align="left", border_style="cyan")


@corpus_app.command("show")
def show(
    entry_id: str = typer.Argument(..., metavar="ID", help="Entry id, e.g. 2006.16236 or arXiv:2006.16236."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print one cognition entry in full."""
    from corpus.retrieval import find_entry

    with user_errors(*_ERRORS):
        entries = load_entries()
        e = find_entry(entries, entry_id)
        if e is None:
            raise ValueError(f"no cognition entry {entry_id!r}; `asiarch-tui corpus list` shows the "
                             f"{len(entries)} ids (with or without the 'arXiv:' prefix)")
    if as_json:
        print(json.dumps(e.to_dict(), indent=2, ensure_ascii=False))
        return
    console.print(_entry_panel(e))


@corpus_app.command("list")
def list_entries(
    lever_opt: Optional[Lever] = typer.Option(None, "--lever", help="Only entries tagged with this lever."),
) -> None:
    """List the entries (id, year, title, levers)."""
    lever = value(lever_opt)
    with user_errors(*_ERRORS):
        entries = [e for e in load_entries() if lever is None or lever in e.levers]
    table = Table(title=f"{len(entries)} cognition entries" + (f" with lever {lever}" if lever else ""),
                  title_justify="left")
    table.add_column("id", style="green", no_wrap=True)
    table.add_column("year", justify="right")
    table.add_column("title", ratio=3)
    table.add_column("levers", style="magenta", ratio=2)
    for e in sorted(entries, key=lambda x: (x.year, x.id)):
        table.add_row(e.short_id, str(e.year), e.title, ", ".join(e.levers))
    console.print(table)


@corpus_app.command("check")
def check() -> None:
    """Validate every entry file (exit 1 naming each bad file and field)."""
    with user_errors(*_ERRORS):
        entries = load_entries()
    counts = {lv: sum(lv in e.levers for e in entries) for lv in LEVERS}
    console.print(f"[green]ok[/]: {len(entries)} entries valid; levers: "
                  + ", ".join(f"{lv} {n}" for lv, n in counts.items()), highlight=False)


@corpus_app.command("index")
def index(
    embedder: Optional[str] = typer.Option(None, "--embedder",
                                           help="Embedder spec: fastembed (default), hash, or ollama:MODEL."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Re-embed every passage, ignoring the cache."),
) -> None:
    """Build (or verify) the cached embedding index ahead of the first search or experiment."""
    import time

    from corpus.retrieval import CognitionBase

    with user_errors(*_ERRORS):
        t0 = time.perf_counter()
        with err_console.status("Embedding the cognition base…"):
            base = CognitionBase.load(embedder, use_cache=not rebuild)
        dt = time.perf_counter() - t0
    source = "cache" if base.from_cache else "embedded now"
    console.print(f"[green]ok[/]: {len(base)} entries, {len(base.index)} passages, {base.embedder.name}, "
                  f"{source} in {dt:.1f} s", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``corpus`` command group to the ``asiarch-tui`` app."""
    app.add_typer(corpus_app, name="corpus")


if __name__ == "__main__":  # pragma: no cover
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(_app)
    _app(args=sys.argv[1:])
