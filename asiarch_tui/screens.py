"""Modal screens of the console: approval, help, quit confirmation, archive and cognition search, git show."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, Mapping

from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.worker import get_current_worker
from textual.widgets import Button, DataTable, Input, Label, Markdown, RichLog, Static

from asiarch_tui.keys import key_table_markdown
from asiarch_tui.widgets import checks_table, fmt_fitness

class HelpScreen(ModalScreen[None]):
    """The keys and what they do: the rows of :func:`asiarch_tui.keys.key_rows` (read from the
    bindings of the console and of the widgets that own keys)."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, rows: Iterable[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = list(rows)

    def compose(self) -> ComposeResult:
        lines = ["# asiarch — keys", "", key_table_markdown(self.rows),
                 "", "All actions are also in the command palette (ctrl+p). Press escape to close."]
        with Vertical():
            yield Markdown("\n".join(lines))


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ReasonScreen(ModalScreen[str | None]):
    """Ask for a one-line reason (rejections)."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Why reject it? (sent to the Researcher; enter to confirm, escape to cancel)")
            yield Input(placeholder="e.g. the decay is not data dependent", id="reason")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or "rejected by the user")

    def action_cancel(self) -> None:
        self.dismiss(None)


class ApprovalScreen(ModalScreen[str]):
    """A checked proposal waiting for approval: motivation, diff against the parent, checks.

    Dismisses with ``"approve"``, ``"reject"``, ``"edit"`` or ``"later"``.
    """

    BINDINGS = [
        Binding("a", "choose('approve')", "approve"),
        Binding("r", "choose('reject')", "reject"),
        Binding("e", "choose('edit')", "edit"),
        Binding("escape", "choose('later')", "later"),
    ]

    def __init__(self, name: str, motivation: str, code: str, parent_code: str,
                 checks: Iterable[Mapping[str, Any]]) -> None:
        super().__init__()
        self.proposal_name = name
        self.motivation = motivation
        self.code = code
        self.parent_code = parent_code
        self.checks = list(checks)

    def compose(self) -> ComposeResult:
        diff = "".join(difflib.unified_diff(
            self.parent_code.splitlines(keepends=True), self.code.splitlines(keepends=True),
            fromfile="parent/mixer.py", tofile="proposal/mixer.py"))
        with Vertical():
            yield Label(Text(f" Approve {self.proposal_name}?  a approve · r reject · e edit · esc later",
                             style="bold reverse"))
            with VerticalScroll():
                yield Markdown(self.motivation)
                yield Static(checks_table(self.checks))
                yield Static(Syntax(diff or self.code, "diff" if diff else "python", word_wrap=True))
            with Horizontal():
                yield Button("Approve (a)", id="approve", variant="success")
                yield Button("Reject (r)", id="reject", variant="error")
                yield Button("Edit (e)", id="edit", variant="primary")
                yield Button("Later (esc)", id="later")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(str(event.button.id))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class TextScreen(ModalScreen[None]):
    """Scrollable text, e.g. the output of ``git show``."""

    BINDINGS = [Binding("escape,q", "dismiss", "close")]

    def __init__(self, title: str, text: str, lexer: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.text = text
        self.lexer = lexer

    def compose(self) -> ComposeResult:
        log = RichLog(wrap=False, markup=False, id="text-log")
        log.border_title = self.title_text + "  (esc to close)"
        yield log

    def on_mount(self) -> None:
        log = self.query_one(RichLog)
        log.write(Syntax(self.text, self.lexer) if self.lexer else Text(self.text))
        log.scroll_home(animate=False)


class SearchScreen(ModalScreen[str | None]):
    """Type a query, see ranked results; enter on a row dismisses with its key."""

    BINDINGS = [Binding("escape", "close", "close")]

    def __init__(self, title: str, columns: list[str],
                 search: Callable[[str], list[tuple[str, list[str], str]]]) -> None:
        """``search(query) -> [(key, row cells, detail text)]``."""
        super().__init__()
        self.title_text = title
        self.columns = columns
        self.search = search
        self.details: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f" {self.title_text} — enter to search, ↓ to browse, esc to close", style="bold reverse"))
            yield Input(placeholder="query", id="query")
            yield DataTable(id="results", cursor_type="row")
            yield Markdown("", id="detail")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*self.columns)
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#detail", Markdown).update("_searching…_")
        self.run_search(event.value)

    @work(thread=True, exclusive=True, group="search")
    def run_search(self, query: str) -> None:
        """Run the search off the UI thread (git reads, embeddings); a newer query cancels the
        display of an older one."""
        try:
            rows = self.search(query)
        except Exception as exc:  # a failing search is shown, never crashes the console
            self.app.call_from_thread(self.show_detail, f"**search failed:** {exc}")
            return
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show_results, rows)

    def show_detail(self, text: str) -> None:
        """Show ``text`` (Markdown) under the results."""
        self.query_one("#detail", Markdown).update(text)

    def show_results(self, rows: list[tuple[str, list[str], str]]) -> None:
        """Fill the table with a search's rows (on the UI thread)."""
        table = self.query_one(DataTable)
        table.clear()
        self.details.clear()
        for key, cells, detail in rows:
            self.details[key] = detail
            table.add_row(*cells, key=key)
        if rows:
            table.focus()
            self.query_one("#detail", Markdown).update(rows[0][2])
        else:
            self.query_one("#detail", Markdown).update("_no results_")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value if event.row_key else None
        if key in self.details:
            self.query_one("#detail", Markdown).update(self.details[key])

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(event.row_key.value if event.row_key else None)

    def action_close(self) -> None:
        self.dismiss(None)


def archive_rows(summaries: Iterable[Mapping[str, Any]], query: str) -> list[tuple[str, list[str], str]]:
    """Archive search: experiments whose id, name, status or motivation contain every query word."""
    words = query.lower().split()
    out = []
    for s in summaries:
        hay = " ".join(str(s.get(k, "")) for k in ("id", "name", "status", "motivation", "problem")).lower()
        if all(w in hay for w in words):
            out.append((str(s["id"]), [str(s["id"]), str(s.get("name")), str(s.get("status")), fmt_fitness(s.get("fitness"))],
                        f"**{s.get('name')}**\n\n{(s.get('motivation') or '')[:1500]}"))
    out.sort(key=lambda r: r[0], reverse=True)
    return out
