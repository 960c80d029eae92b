"""The research console: a Textual app over a lab and its live research loop.

The loop runs in its own worker thread (``agents.loop``); it talks to the app only through typed
events (``agents.events``), which arrive here as :class:`LoopEvent` messages (``post_message`` is
thread-safe), and through its command methods (pause, resume, fork, approve, ...), which only
enqueue commands. Nothing in the app blocks on training or an LLM call.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Protocol

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Footer, Label, ProgressBar, RichLog

from agents import events as ev
from asiarch_tui.screens import (
    KEYS,
    ApprovalScreen,
    ConfirmScreen,
    HelpScreen,
    ReasonScreen,
    SearchScreen,
    TextScreen,
    archive_rows,
)
from archive.lineage import best_over_time
from asiarch_tui.widgets import ExperimentTabs, LineageTree, PlotPanel, RunningPanel, StatusBar


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


#: A training log line with a step count: ``[label] step X/Y ...``.
STEP_RE = re.compile(r"^\[(?P<label>[\w\-]+)\]\s+step\s+(?P<step>\d+)/(?P<total>\d+)")


class LoopEvent(Message):
    """An event of the loop, handed over to the UI thread."""

    def __init__(self, event: ev.Event) -> None:
        super().__init__()
        self.event = event


class ResearchConsole(App[None]):
    """asiarch-tui: lineage tree, experiment tabs, running experiment, plots and controls."""

    TITLE = "asiarch"
    CSS = """
    #top { height: 3fr; }
    #bottom { height: 2fr; }
    #warnings { height: auto; max-height: 3; color: $warning; }
    """
    BINDINGS = [
        Binding("p", "toggle_pause", "pause/resume"),
        Binding("a", "approve", "approve"),
        Binding("r", "reject", "reject"),
        Binding("e", "edit", "edit"),
        Binding("f", "fork", "fork"),
        Binding("m", "switch_mode", "mode"),
        Binding("s", "stop_after", "stop"),
        Binding("slash", "search_archive", "search"),
        Binding("c", "search_cognition", "cognition"),
        Binding("g", "git_show", "git show"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit_console", "quit"),
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
        self.loss_points: list[tuple[int, float]] = []
        self.loss_label = ""
        self.parents: dict[str, str | None] = {}
        self.started = False
        self._cognition: Any = None
        self.done = 0
        self._unsubscribe = None

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
        status.set(mode=self.mode, llm=self.llm_label, frozen_elapsed=None if self.clock else 0)
        self.reload_archive()
        if self.clock:
            self.set_interval(1.0, lambda: status.set())
        if self.loop is not None:
            self._unsubscribe = self.loop.bus.subscribe(lambda e: self.post_message(LoopEvent(e)))
            if self.autostart:
                self.start_loop()
        self.query_one(LineageTree).focus()

    def on_resize(self, event: Any) -> None:
        """Small terminals (e.g. 80x24) keep the discovery curve and drop the loss plot."""
        try:
            self.query_one("#loss-plot").display = self.size.height >= 36
        except Exception:  # not composed yet
            pass

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
        # only accepted experiments with a fitness are points of the fitness line; the line is the
        # best design's lower bound over time (best moved by the promotion rule)
        self.query_one(PlotPanel).draw_discovery([d.get("fitness") if d.get("status") == "accepted" else None
                                                  for d in docs_sorted],
                                                 [p["lower"] for p in best_over_time(docs_sorted)])
        self.done = len(docs)
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
        e = message.event
        running = self.query_one(RunningPanel)
        if isinstance(e, ev.ExperimentStarted):
            self.in_flight = e.exp_id
            self.parents[str(e.exp_id)] = e.parent
            self.loss_points, self.loss_label = [], ""
            self.query_one(PlotPanel).draw_loss([])
            running.query_one(ProgressBar).update(total=100, progress=0)
            running.query_one("#phase", Label).update("")
            running.query_one("#train-log", RichLog).clear()
            running.query_one("#agent-log", RichLog).clear()
            running.border_title = f"running: experiment {e.exp_id} (parent {e.parent or '—'})"
        elif isinstance(e, ev.StageChanged):
            detail = f" — {e.detail}" if e.detail else ""
            running.query_one("#stage", Label).update(Text(f"stage: {e.stage} ({e.status}){detail}", style="bold"))
            if e.stage in ("evaluate", "baseline") and e.status == "started":
                running.query_one(ProgressBar).update(total=100, progress=0)
        elif isinstance(e, ev.LogLine):
            running.query_one("#train-log", RichLog).write(e.line)
            m = STEP_RE.match(e.line)
            if m:  # "[label] step X/Y ...": progress of the current training phase
                running.query_one(ProgressBar).update(total=int(m["total"]), progress=int(m["step"]))
                running.query_one("#phase", Label).update(f"training: {m['label']} ({m['step']}/{m['total']})")
        elif isinstance(e, ev.AgentMessage):
            log = running.query_one("#agent-log", RichLog)
            if e.message == "request":
                log.write(Text(f"── {e.role} → {e.model}", style="bold cyan"))
            elif e.message == "delta":
                self._stream_delta(log, e.text)
            elif e.message == "reply":
                self._flush_stream(log)
                log.write(Text(f"── {e.role} replied ({(e.duration_s or 0):.1f}s)", style="dim"))
            elif e.message == "error":
                log.write(Text(f"── {e.role} error: {e.text}", style="red"))
        elif isinstance(e, ev.MetricPoint) and e.name.endswith("_loss"):
            label = e.name[: -len("_loss")]
            if label != self.loss_label:  # a new phase (a probe, then the LM): a new curve
                self.loss_label, self.loss_points = label, []
            self.loss_points.append((e.step, e.value))
            self.query_one(PlotPanel).draw_loss(self.loss_points, label)
        elif isinstance(e, ev.ApprovalRequested):
            self.pending_approval = e
            self.open_approval()
        elif isinstance(e, ev.ExperimentFinished):
            self.in_flight = None
            self.pending_approval = None
            running.query_one(ProgressBar).update(total=100, progress=100)
            self.reload_archive(select=e.exp_id)
        elif isinstance(e, ev.BaselineProgress):
            self.query_one(StatusBar).set(baselines=baseline_status(e))
        elif isinstance(e, ev.LoopStateChanged):
            self.state = e.state
            self.query_one(StatusBar).set(state=e.state)
            if e.state in ("stopped", "finished"):
                self.in_flight = None
        elif isinstance(e, ev.LLMStatus):
            states = {r.get("state") for r in e.roles.values()} - {"builtin"}
            self.query_one(StatusBar).set(llm=e.detail or self.llm_label,
                                          llm_ok=not (states & {"open", "unreachable"}))
        elif isinstance(e, ev.AgentStep):
            bar = self.query_one(StatusBar)
            steps = dict(bar.values.get("llm_steps") or {})
            llm, fb = steps.get(e.role, (0, 0))
            if e.by in ("llm", "fallback"):
                steps[e.role] = (llm + (e.by == "llm"), fb + (e.by == "fallback"))
                bar.set(llm_steps=steps)
        elif isinstance(e, ev.Warning):
            self.query_one("#warnings", Label).update(Text(f"⚠ {e.message}", style="yellow"))
            if e.source == "llm-ok":
                self.query_one(StatusBar).set(llm_ok=True)
            elif e.source.startswith("llm"):
                self.query_one(StatusBar).set(llm_ok=False)
            self.notify(e.message, severity="warning", timeout=6)

    _stream_buf = ""

    def _stream_delta(self, log: RichLog, text: str) -> None:
        """Token-by-token streaming: write complete lines as they arrive."""
        self._stream_buf += text
        while "\n" in self._stream_buf:
            line, self._stream_buf = self._stream_buf.split("\n", 1)
            log.write(line)

    def _flush_stream(self, log: RichLog) -> None:
        if self._stream_buf:
            log.write(self._stream_buf)
            self._stream_buf = ""

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
        code = self.pending_approval.code
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(code)
            path = fh.name
        try:
            with self.suspend():
                subprocess.run([*shlex.split(editor), path], check=False)
            edited = Path(path).read_text()
        except Exception as exc:  # suspend is unsupported in some drivers (e.g. headless tests)
            self.notify(f"could not run the editor: {exc}", severity="error")
            return
        finally:
            Path(path).unlink(missing_ok=True)
        self.loop.approve(code=edited)
        self.pending_approval = None
        self.notify("edited and approved")

    def action_fork(self) -> None:
        """f: the next experiment's parent is the selected node."""
        exp_id = self.query_one(LineageTree).selected_id
        if self.loop is None or exp_id is None:
            self.notify("select an experiment to fork from")
            return
        self.loop.fork(exp_id)
        self.notify(f"next parent: {exp_id}")

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

    def action_git_show(self) -> None:
        """g: `git show` the selected experiment's commit."""
        exp_id = self.query_one(LineageTree).selected_id
        rec = self.record(exp_id)
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
        self.push_screen(HelpScreen())

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


__all__ = ["ResearchConsole", "LoopControl", "LoopEvent", "KEYS"]


def baseline_status(e: Any) -> str:
    """The status-bar text of a :class:`agents.events.BaselineProgress` event: "measuring the
    seed" while the yardstick is measured (experiments wait), "measuring baselines 2/5" while a
    comparison is, nothing once it is done."""
    if e.status != "started":
        return ""
    if e.seed:
        return "measuring the seed (experiments wait)"
    return f"measuring baselines {e.index}/{e.total}"


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
