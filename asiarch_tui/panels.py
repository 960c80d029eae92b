"""The live panels of the research console: the running experiment, the plots, the status bar.

Each updates itself from the loop events (``agents.events``) its ``handle`` method is given; the
console hands every event to each panel and touches none of their children."""

from __future__ import annotations

import re
import time
from typing import Any, Mapping

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, RichLog, Static
from textual_plotext import PlotextPlot

from agents import events as ev
from asiarch_tui.widgets import fmt_fitness

#: A training log line with a step count: ``[label] step X/Y ...``.
STEP_RE = re.compile(r"^\[(?P<label>[\w\-]+)\]\s+step\s+(?P<step>\d+)/(?P<total>\d+)")


class RunningPanel(Vertical):
    """The experiment in flight: stage, training progress, log tail and the streaming transcript.

    It updates itself from the loop events :meth:`handle` is given."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stream_buf = ""

    def compose(self) -> ComposeResult:
        yield Label("idle", id="stage")
        with Horizontal(id="progress-row"):
            yield ProgressBar(total=100, show_eta=True, id="train-progress")
            yield Label("", id="phase")
        with Horizontal(id="logs"):
            # min_width=1: a line wraps at the pane's width (RichLog's default renders at 78
            # columns and crops a narrower pane mid-word)
            yield RichLog(id="train-log", max_lines=500, wrap=True, markup=False, auto_scroll=True, min_width=1)
            yield RichLog(id="agent-log", max_lines=2000, wrap=True, markup=False, auto_scroll=True, min_width=1)

    def on_mount(self) -> None:
        self.border_title = "running"

    def handle(self, e: ev.Event) -> None:
        """Show one loop event: a new experiment, a stage, a log line, a streamed agent message."""
        bar = self.query_one(ProgressBar)
        if isinstance(e, ev.ExperimentStarted):
            bar.update(total=100, progress=0)
            self.query_one("#phase", Label).update("")
            self.query_one("#train-log", RichLog).clear()
            self.query_one("#agent-log", RichLog).clear()
            self.border_title = f"running: experiment {e.exp_id} (parent {e.parent or '—'})"
        elif isinstance(e, ev.StageChanged):
            detail = f" — {e.detail}" if e.detail else ""
            self.query_one("#stage", Label).update(Text(f"stage: {e.stage} ({e.status}){detail}", style="bold"))
            if e.stage in ("evaluate", "baseline") and e.status == "started":
                bar.update(total=100, progress=0)
        elif isinstance(e, ev.LogLine):
            self.query_one("#train-log", RichLog).write(e.line)
            m = STEP_RE.match(e.line)
            if m:  # "[label] step X/Y ...": progress of the current training phase
                bar.update(total=int(m["total"]), progress=int(m["step"]))
                self.query_one("#phase", Label).update(f"training: {m['label']} ({m['step']}/{m['total']})")
        elif isinstance(e, ev.AgentMessage):
            self._agent_message(e)
        elif isinstance(e, ev.ExperimentFinished):
            bar.update(total=100, progress=100)

    def _agent_message(self, e: ev.AgentMessage) -> None:
        log = self.query_one("#agent-log", RichLog)
        if e.message == "request":
            log.write(Text(f"── {e.role} → {e.model}", style="bold cyan"))
        elif e.message == "delta":  # token-by-token streaming: complete lines as they arrive
            self._stream_buf += e.text
            while "\n" in self._stream_buf:
                line, self._stream_buf = self._stream_buf.split("\n", 1)
                log.write(line)
        elif e.message == "reply":
            if self._stream_buf:
                log.write(self._stream_buf)
                self._stream_buf = ""
            log.write(Text(f"── {e.role} replied ({(e.duration_s or 0):.1f}s)", style="dim"))
        elif e.message == "error":
            log.write(Text(f"── {e.role} error: {e.text}", style="red"))


class PlotPanel(Vertical):
    """Discovery curve (best and each fitness vs experiment) and the running loss curve.

    ``discovery_points`` are the (experiment index, fitness) points drawn, ``loss_label`` /
    ``loss_points`` the curve of the running training phase (fed by :meth:`handle`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.discovery_points: list[tuple[int, float]] = []
        self.loss_label = ""
        self.loss_points: list[tuple[int, float]] = []

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="discovery-plot")
        yield PlotextPlot(id="loss-plot")

    def on_resize(self, event: Any) -> None:
        """Small terminals (e.g. 80x24) keep the discovery curve and drop the loss plot."""
        self.query_one("#loss-plot").display = self.app.size.height >= 36

    def handle(self, e: ev.Event) -> None:
        """A new experiment clears the loss curve; a ``*_loss`` metric point extends it (a new
        phase, a probe then the LM, starts a new curve)."""
        if isinstance(e, ev.ExperimentStarted):
            self.loss_label, self.loss_points = "", []
            self.draw_loss([])
        elif isinstance(e, ev.MetricPoint) and e.name.endswith("_loss"):
            label = e.name[: -len("_loss")]
            if label != self.loss_label:
                self.loss_label, self.loss_points = label, []
            self.loss_points.append((e.step, e.value))
            self.draw_loss(self.loss_points, label)

    def draw_archive(self, docs: list[Mapping[str, Any]], best_lower: list[float | None]) -> None:
        """The discovery curve of index documents in id order: a point per accepted experiment
        with a fitness (a failed, too slow or rejected one has none, whatever an older archive
        stored), the best design's lower bound as the line."""
        self.draw_discovery([d.get("fitness") if d.get("status") == "accepted" else None for d in docs],
                            best_lower)

    def draw_discovery(self, fitnesses: list[float | None], best_lower: list[float | None] | None = None) -> None:
        """Plot each experiment's fitness and the best design over time: the lower bound of its
        fitness interval when ``best_lower`` is given (one value per experiment), else the
        running maximum."""
        plot = self.query_one("#discovery-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("discovery: fitness per experiment")
        self.discovery_points = [(i, f) for i, f in enumerate(fitnesses) if f is not None]
        xs = [p[0] for p in self.discovery_points]
        ys = [p[1] for p in self.discovery_points]
        if ys:
            plt.scatter(xs, ys, marker="dot", label="fitness")
            if best_lower is not None:
                bx = [i for i, v in enumerate(best_lower) if v is not None]
                plt.plot(bx, [best_lower[i] for i in bx], label="best (lower bound)")
            else:
                best, run = [], float("-inf")
                for y in ys:
                    run = max(run, y)
                    best.append(run)
                plt.plot(xs, best, label="best")
        plot.refresh()

    def draw_loss(self, points: list[tuple[int, float]], label: str = "") -> None:
        """Plot the running experiment's training loss (of the current phase: a probe or the LM)."""
        plot = self.query_one("#loss-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"training loss: {label}" if label else "training loss (running)")
        if points:
            plt.plot([p[0] for p in points], [p[1] for p in points])
        plot.refresh()


def baseline_status(e: Any) -> str:
    """The status-bar text of a :class:`agents.events.BaselineProgress` event: "measuring the
    seed" while the yardstick is measured (experiments wait), "measuring baselines 2/5" while a
    comparison is, nothing once it is done."""
    if e.status != "started":
        return ""
    if e.seed:
        return "measuring the seed (experiments wait)"
    return f"measuring baselines {e.index}/{e.total}"


class StatusBar(Static):
    """Mode, loop state, experiments done, best fitness, elapsed, LLM backend and health, and per
    role the steps its model answered out of those it was asked (``R 2/3``: researcher).

    "done" counts the experiments the loop ran: not the seed, not its measurement."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.values: dict[str, Any] = {"mode": "autonomous", "state": "idle", "done": 0, "best": None,
                                       "llm": "builtin", "llm_ok": True, "started": time.monotonic(),
                                       "frozen_elapsed": None, "baselines": "", "llm_label": "builtin"}

    def set(self, **values: Any) -> None:
        """Update some fields and re-render."""
        self.values.update(values)
        self.update(self.render_status())

    def handle(self, e: ev.Event) -> None:
        """Follow the loop's state, baselines, LLM health and per-role steps."""
        if isinstance(e, ev.BaselineProgress):
            self.set(baselines=baseline_status(e))
        elif isinstance(e, ev.LoopStateChanged):
            self.set(state=e.state)
        elif isinstance(e, ev.LLMStatus):
            states = {r.get("state") for r in e.roles.values()} - {"builtin"}
            self.set(llm=e.detail or self.values["llm_label"], llm_ok=not (states & {"open", "unreachable"}))
        elif isinstance(e, ev.AgentStep) and e.by in ("llm", "fallback"):
            steps = dict(self.values.get("llm_steps") or {})
            llm, fb = steps.get(e.role, (0, 0))
            steps[e.role] = (llm + (e.by == "llm"), fb + (e.by == "fallback"))
            self.set(llm_steps=steps)
        elif isinstance(e, ev.Warning):
            if e.source == "llm-ok":
                self.set(llm_ok=True)
            elif e.source.startswith("llm"):
                self.set(llm_ok=False)

    def render_status(self) -> Text:
        """The status line as rich Text."""
        v = self.values
        elapsed = v["frozen_elapsed"] if v["frozen_elapsed"] is not None else time.monotonic() - v["started"]
        h, rem = divmod(int(elapsed), 3600)
        m, s = divmod(rem, 60)
        state_style = {"running": "green", "paused": "yellow", "waiting_approval": "magenta"}.get(v["state"], "white")
        t = Text()
        t.append(f" {v['mode']} ", style="bold reverse")
        t.append(f"  {v['state']}", style=f"bold {state_style}")
        if v.get("baselines"):  # "measuring the seed" / "measuring baselines 2/5"
            t.append(f"  {v['baselines']}", style="bold cyan")
        t.append(f"  · {v['done']} done · best {fmt_fitness(v['best'])} · {h:d}:{m:02d}:{s:02d}")
        t.append(f" · llm {v['llm']} ")
        t.append("●" if v["llm_ok"] else "○ unreachable", style="green" if v["llm_ok"] else "red")
        steps = v.get("llm_steps") or {}
        if steps:
            # steps each role's model answered / steps it was asked (the rest: built-in fallback)
            t.append("  " + " ".join(f"{r[0].upper()} {a}/{a + b}" for r, (a, b) in steps.items()),
                     style="yellow" if any(b for a, b in steps.values()) else "")
        return t
