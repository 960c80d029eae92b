"""The research console: a Textual app over a lab and its live research loop.

The loop runs in its own worker thread (``agents.loop``); it talks to the app only through typed
events (``agents.events``), which arrive here as :class:`LoopEvent` messages (``post_message`` is
thread-safe), and through its command methods (pause, resume, fork, approve, ...), which only
enqueue commands. Nothing in the app blocks on training or an LLM call.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Protocol

import click
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Footer, Label

from agents import events as ev
from asiarch_tui.keys import key_rows
from asiarch_tui.panels import PlotPanel, RunningPanel, StatusBar, baseline_status
from asiarch_tui.screens import (
    ApprovalScreen,
    ConfirmScreen,
    HelpScreen,
    ReasonScreen,
    SearchScreen,
    TextScreen,
    archive_rows,
)
from archive.lineage import best_over_time
from asiarch_tui.widgets import ExperimentTabs, LineageTree, is_experiment


class LoopControl(Protocol):
    """What the console needs of a research loop (``agents.loop.Loop`` provides it)."""

    bus: ev.EventBus

    def start(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop(self, after: str = "stage") -> None: ...
    def fork(self, exp_id: str) -> None: ...
    def approve(self, code: str | None = None) -> None: ...
    def reject(self, reason: str) -> None: ...
    def set_mode(self, mode: str) -> None: ...
    def shutdown(self, timeout: float = 5.0) -> None: ...


class LoopEvent(Message):
    """An event of the loop, handed over to the UI thread."""

    def __init__(self, event: ev.Event) -> None:
        super().__init__()
        self.event = event


class ResearchConsole(App[None]):
    """asiarch-tui: lineage tree, experiment tabs, running experiment, plots and controls.

    Keys that act on the loop live here; those that act on the selected node (fork, git show)
    on :class:`LineageTree`. Every binding's tooltip is its line in the help screen."""

    TITLE = "asiarch"
    CSS_PATH = "console.tcss"
    BINDINGS = [
        Binding("p", "toggle_pause", "pause/resume", tooltip="pause / resume the loop (pauses after the current step)"),
        Binding("a", "approve", "approve", tooltip="approve the proposal waiting for approval (supervised mode)"),
        Binding("r", "reject", "reject", tooltip="reject it, with a reason sent back to the Researcher"),
        Binding("e", "edit", "edit", tooltip="edit its code in $EDITOR, then approve"),
        Binding("m", "switch_mode", "mode", tooltip="switch mode (autonomous / supervised)"),
        Binding("s", "stop_after", "stop", tooltip="stop after the current experiment"),
        Binding("slash", "search_archive", "search", tooltip="search the archive (names, motivations)"),
        Binding("c", "search_cognition", "cognition", tooltip="search the cognition base"),
        Binding("question_mark", "help", "help", tooltip="this help"),
        Binding("q", "quit_console", "quit",
                tooltip="quit (asks when a run is in flight; the run resumes on the next start)"),
    ]

    def __init__(self, lab: Any, loop: LoopControl | None = None, *, autostart: bool = True,
                 llm_label: str = "builtin", clock: bool = True) -> None:
        """
        Args:
            lab: an open ``archive.lab.Lab``.
            loop: the research loop to drive (``None``: browse the archive only).
            autostart: start the loop once the screen is up.
            llm_label: what the status bar shows as the LLM backend.
            clock: show a live elapsed time (tests switch it off for stable snapshots).
        """
        super().__init__()
        self.lab = lab
        self.loop = loop
        self.autostart = autostart
        self.clock = clock
        self.llm_label = llm_label
        self.mode = getattr(getattr(lab, "config", None), "loop", None)
        self.mode = getattr(self.mode, "mode", "autonomous")
        self.state = "idle"
        self.in_flight: str | None = None
        self.pending_approval: ev.ApprovalRequested | None = None
        self.parents: dict[str, str | None] = {}
        self.started = False
        self._cognition: Any = None
        self.done = 0
        self._unsubscribe: Any = None

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Horizontal(id="top"):
            yield LineageTree(id="tree")
            yield ExperimentTabs(id="tabs")
        yield Label("", id="warnings")
        with Horizontal(id="bottom"):
            yield RunningPanel(id="running")
            yield PlotPanel(id="plots")
        yield Footer()

    def on_mount(self) -> None:
        status = self.query_one(StatusBar)
        status.set(mode=self.mode, llm=self.llm_label, llm_label=self.llm_label,
                   frozen_elapsed=None if self.clock else 0)
        self.reload_archive()
        if self.clock:
            self.set_interval(1.0, lambda: status.set())
        if self.loop is not None:
            self._unsubscribe = self.loop.bus.subscribe(lambda e: self.post_message(LoopEvent(e)))
            if self.autostart:
                self.start_loop()
        self.query_one(LineageTree).focus()

    # -- archive view ------------------------------------------------------------------------
    def summaries(self) -> list[dict[str, Any]]:
        """Every experiment's summary (from the lab's derived index)."""
        return [dict(d) for d in self.lab.index.all()]

    def _best_doc(self, docs: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The index document of ``best`` (moved by the promotion rule), not merely the highest
        fitness: a one-seed result above it is shown but not starred."""
        try:
            best_id = self.lab.store.best_id()
        except Exception:
            best_id = None
        by_id = {d.get("id"): d for d in docs}
        if best_id in by_id:
            return by_id[best_id]
        return max((d for d in docs if d.get("status") == "accepted" and d.get("fitness") is not None),
                   key=lambda d: d["fitness"], default=None)

    def reload_archive(self, select: str | None = None) -> None:
        """Rebuild the tree, the discovery plot and the status from the lab's index."""
        docs = self.summaries()
        best = self._best_doc(docs)
        tree = self.query_one(LineageTree)
        tree.load(docs, best["id"] if best else None)
        docs_sorted = sorted(docs, key=lambda d: d["id"])
        # the line is the best design's lower bound over time (best moved by the promotion rule)
        self.query_one(PlotPanel).draw_archive(docs_sorted, [p["lower"] for p in best_over_time(docs_sorted)])
        self.done = sum(1 for d in docs if is_experiment(d))
        self.query_one(StatusBar).set(done=self.done, best=best["fitness"] if best else None)
        target = select or (best["id"] if best else (docs_sorted[-1]["id"] if docs_sorted else None))
        if target:
            self.call_after_refresh(tree.select_id, target)
            self.show_experiment(target)

    def record(self, exp_id: str | None) -> Any | None:
        """The archived record of ``exp_id``, or None when the archive has no such experiment."""
        if exp_id is None or exp_id not in self.lab.store:
            return None
        return self.lab.store.get(exp_id)

    def show_experiment(self, exp_id: str) -> None:
        """Fill the tabs with one experiment, its parent and the baselines."""
        rec = self.record(exp_id)
        if rec is None:
            return
        rec_d = _rescored(self.lab, rec.to_dict())
        parent_rec = self.record(rec.parent)
        parent = _rescored(self.lab, parent_rec.to_dict()) if parent_rec else None
        self.query_one(ExperimentTabs).show(rec_d, parent, self.baselines(rec.scale))

    def baselines(self, scale: str) -> dict[str, dict[str, Any]]:
        """Reference baselines' metrics at ``scale`` (cached by the loop in the lab), by name."""
        folder = Path(self.lab.path) / "baselines"
        path = folder / f"{scale}.json"
        if not path.exists():  # a custom scale's file is named <scale>-<digest>.json
            path = next(iter(sorted(folder.glob(f"{scale}-*.json"))), path)
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return {name: (m.get("metrics", m) if isinstance(m, dict) else {}) for name, m in data.items()}

    @on(LineageTree.NodeHighlighted)
    def _node_highlighted(self, event: LineageTree.NodeHighlighted) -> None:
        if event.node.data:
            try:
                self.show_experiment(event.node.data)
            except NoMatches:  # a highlight that arrives while the screen is being torn down
                pass

    # -- events from the loop ----------------------------------------------------------------
    def on_loop_event(self, message: LoopEvent) -> None:
        """Hand the event to each panel (they update themselves), then keep the console's own
        state: the experiment in flight, the approval waiting, the archive once one lands."""
        e = message.event
        for panel in (self.query_one(RunningPanel), self.query_one(PlotPanel), self.query_one(StatusBar)):
            panel.handle(e)
        if isinstance(e, ev.ExperimentStarted):
            self.in_flight = e.exp_id
            self.parents[str(e.exp_id)] = e.parent
        elif isinstance(e, ev.ApprovalRequested):
            self.pending_approval = e
            self.open_approval()
        elif isinstance(e, ev.ExperimentFinished):
            self.in_flight = None
            self.pending_approval = None
            self.reload_archive(select=e.exp_id)
        elif isinstance(e, ev.LoopStateChanged):
            self.state = e.state
            if e.state in ("stopped", "finished"):
                self.in_flight = None
        elif isinstance(e, ev.Warning):
            self.query_one("#warnings", Label).update(Text(f"⚠ {e.message}", style="yellow"))
            self.notify(e.message, severity="warning", timeout=6)

    # -- actions -----------------------------------------------------------------------------
    def start_loop(self) -> None:
        """Start the loop's worker thread (once)."""
        if self.loop is not None and not self.started:
            self.started = True
            self.loop.start()

    def action_toggle_pause(self) -> None:
        """p: pause after the current step, or resume (or start a loop opened with --paused)."""
        if self.loop is None:
            self.notify("no loop attached (read-only view)")
            return
        if not self.started:
            self.start_loop()
            self.notify("starting the loop")
        elif self.state == "paused":
            self.loop.resume()
            self.notify("resuming")
        else:
            self.loop.pause()
            self.notify("pausing after the current step")

    def open_approval(self) -> None:
        """Show the approval panel for the pending proposal."""
        e = self.pending_approval
        if e is None:
            self.notify("nothing waits for approval")
            return
        parent_code = ""
        parent_id = self.parents.get(str(e.exp_id))
        rec = self.record(parent_id)
        parent_code = rec.code if rec else ""
        screen = ApprovalScreen(e.name, e.motivation, e.code, parent_code, e.checks)
        self.push_screen(screen, self._approval_chosen)

    def _approval_chosen(self, choice: str | None) -> None:
        if choice == "approve":
            self.action_approve()
        elif choice == "reject":
            self.action_reject()
        elif choice == "edit":
            self.action_edit()

    def action_approve(self) -> None:
        """a: approve the pending proposal."""
        if self.loop is None or self.pending_approval is None:
            self.notify("nothing waits for approval")
            return
        self.loop.approve()
        self.pending_approval = None
        self.notify("approved")

    def action_reject(self) -> None:
        """r: reject the pending proposal with a reason."""
        if self.loop is None or self.pending_approval is None:
            self.notify("nothing waits for approval")
            return

        def done(reason: str | None) -> None:
            if reason is not None and self.loop is not None and self.pending_approval is not None:
                self.loop.reject(reason)
                self.pending_approval = None
                self.notify("rejected")

        self.push_screen(ReasonScreen(), done)

    def action_edit(self) -> None:
        """e: edit the pending proposal's code in $EDITOR, then approve it."""
        if self.loop is None or self.pending_approval is None:
            self.notify("nothing waits for approval")
            return
        try:
            with self.suspend():
                edited = click.edit(self.pending_approval.code, extension=".py", require_save=False)
        except Exception as exc:  # suspend is unsupported in some drivers (e.g. headless tests)
            self.notify(f"could not run the editor: {exc}", severity="error")
            return
        if edited is None:
            return
        self.loop.approve(code=edited)
        self.pending_approval = None
        self.notify("edited and approved")

    @on(LineageTree.ForkRequested)
    def _fork(self, event: LineageTree.ForkRequested) -> None:
        """f on the tree: the next experiment's parent is the selected node."""
        if self.loop is None:
            self.notify("no loop attached (read-only view)")
            return
        self.loop.fork(event.exp_id)
        self.notify(f"next parent: {event.exp_id}")

    def action_switch_mode(self) -> None:
        """m: switch between autonomous and supervised."""
        self.mode = "supervised" if self.mode == "autonomous" else "autonomous"
        if self.loop is not None:
            self.loop.set_mode(self.mode)
        self.query_one(StatusBar).set(mode=self.mode)
        self.notify(f"mode: {self.mode}")

    def action_stop_after(self) -> None:
        """s: stop after the current experiment."""
        if self.loop is not None:
            self.loop.stop(after="experiment")
            self.notify("stopping after this experiment")

    def action_search_archive(self) -> None:
        """/: search the archive."""
        docs = self.summaries()
        full: list[dict[str, Any]] = []  # read from git on the first query, then reused

        def search(query: str):
            if not full:
                for d in docs:
                    rec = self.record(d["id"])
                    full.append({**d, "motivation": rec.motivation if rec else "",
                                 "problem": rec.problem if rec else ""})
            return archive_rows(full, query)

        def chosen(key: str | None) -> None:
            if key:
                self.query_one(LineageTree).select_id(key)
                self.show_experiment(key)

        self.push_screen(SearchScreen("search the archive", ["id", "name", "status", "fitness"], search), chosen)

    def action_search_cognition(self) -> None:
        """c: search the cognition base."""

        def search(query: str):
            from corpus.retrieval import CognitionBase

            if self._cognition is None:  # loaded once per console, not per query
                self._cognition = CognitionBase.load()
            base = self._cognition
            rows = []
            for entry, score in base.search(query, k=10):
                detail = (f"**{entry.title}** ({entry.year}) `{entry.id}`\n\n**Scenario.** {entry.scenario}\n\n"
                          f"**Algorithm.** {entry.algorithm}\n\n**History.** {entry.history}")
                rows.append((entry.id, [f"{score:.3f}", entry.title, ", ".join(entry.levers)], detail))
            return rows

        self.push_screen(SearchScreen("search the cognition base", ["score", "title", "levers"], search))

    @on(LineageTree.GitShowRequested)
    def _git_show(self, event: LineageTree.GitShowRequested) -> None:
        """g on the tree: `git show` the selected experiment's commit."""
        rec = self.record(event.exp_id)
        if rec is None:
            return
        try:
            out = subprocess.run(["git", "-C", str(self.lab.store.path), "show", "--stat", "--patch", rec.tag],
                                 capture_output=True, text=True, timeout=20)
            text = out.stdout or out.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"git show failed: {exc}"
        self.push_screen(TextScreen(f"git show {rec.tag}", text, lexer="diff"))

    def action_help(self) -> None:
        """?: the keys."""
        self.push_screen(HelpScreen(console_keys()))

    def action_quit_console(self) -> None:
        """q: quit; asks when a run is in flight (it stays resumable)."""
        if self.in_flight is not None and self.state not in ("stopped", "finished", "idle"):
            def answer(yes: bool | None) -> None:
                if yes:
                    self._shutdown_and_exit()

            self.push_screen(ConfirmScreen(
                f"Experiment {self.in_flight} is in flight. Quit now? It is redone on the next start."), answer)
        else:
            self._shutdown_and_exit()

    def _shutdown_and_exit(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self.loop is not None and self.started:
            self.loop.shutdown(timeout=5.0)
        self.exit()


def console_keys() -> list[tuple[str, str, str]]:
    """Every key of the main screen: ``(key, what it does, where)``, from the bindings."""
    return key_rows([("console", ResearchConsole), ("lineage tree", LineageTree)])


__all__ = ["ResearchConsole", "LoopControl", "LoopEvent", "console_keys", "baseline_status"]


def _rescored(lab: Any, rec: dict[str, Any]) -> dict[str, Any]:
    """A record dict with its fitness re-scored against the current yardstick (lab.scores)."""
    scores = getattr(lab, "scores", None)
    s = scores.get(rec.get("id", "")) if scores is not None else None
    if s is None:
        return rec
    comps = s.get("fitness_components") or {}
    out = {**rec, "fitness": s.get("fitness"), "fitness_components": comps}
    if "fitness_interval" in comps:  # the multi-seed figures are re-scored with the fitness
        out["fitness_interval"] = comps.get("fitness_interval")
        out["fitness_seeds"] = comps.get("fitness_seeds") or {}
    if "promotion" in comps:
        out["promotion"] = {**(rec.get("promotion") or {}), "outcome": comps.get("promotion")}
    return out
