"""``asiarch-tui run LAB --headless``: the research loop without the console, with a rich progress
display and a final table. Ctrl-C stops after the current stage (the experiment in flight is
redone at the next start)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from asiarch_tui.cli_common import (LabArg, LabOpt, Mode, ScaleName, check_llm_spec, check_mixer_names, fail,
                                    lab_path, value)

console = Console()


class _Display:
    """Keeps the state shown while the loop runs (fed with events from the worker thread)."""

    def __init__(self, budget: int | None) -> None:
        self.t0 = time.monotonic()
        self.budget = budget
        self.state = "starting"
        self.current: dict[str, Any] = {}
        self.finished: list[Any] = []
        self.warnings: list[str] = []
        self.tokens = 0
        self.llm_label = ""
        self.lock = threading.Lock()

    def on_event(self, ev: Any) -> str | None:
        """Update from one event; returns a plain line worth printing in non-interactive mode."""
        kind = type(ev).kind
        with self.lock:
            if kind == "LoopStateChanged":
                self.state = ev.state
                return f"loop: {ev.state}" + (f" ({ev.detail})" if ev.detail else "")
            if kind == "ExperimentStarted":
                self.current = {"id": ev.exp_id, "parent": ev.parent, "stage": "sample", "line": "",
                                "started": time.monotonic()}
                return f"{ev.exp_id}: started from {ev.parent}" + (" (redo after a crash)" if ev.redo else "")
            if kind == "BaselineProgress":
                what = ("the seed (the yardstick; experiments wait for it)" if ev.seed
                        else f"baselines {ev.index}/{ev.total}")
                if ev.status == "started":
                    self.current = {"id": "baseline", "parent": "", "stage": f"measuring {what}: {ev.name}",
                                    "line": "", "started": time.monotonic()}
                    return f"measuring {what}: {ev.name}"
                self.current = {}
                return f"measured {ev.detail or ev.name}"
            if kind == "StageChanged":
                if ev.stage == "baseline":
                    return None  # BaselineProgress says it
                if ev.exp_id and ev.exp_id == self.current.get("id"):
                    self.current["stage"] = ev.stage + ("" if ev.status == "started" else f" {ev.status}")
                if ev.status == "failed":
                    return f"{ev.exp_id or ''}: {ev.stage} failed: {ev.detail}"
                if ev.status == "started" and ev.stage != "sample":
                    return f"{ev.exp_id or '----'}: {ev.stage}" + (f" {ev.detail}" if ev.detail else "")
                return None
            if kind == "LogLine":
                self.current["line"] = ev.line[-100:]
                return None
            if kind == "AgentMessage":
                if ev.message == "delta":
                    self.tokens += 1
                    return None
                if ev.model == "builtin" or ev.message not in ("reply", "error"):
                    return None  # built-in steps show as their AgentStep
                tok = ""
                if ev.tokens_in is not None or ev.tokens_out is not None:
                    tok = f", {ev.tokens_in or 0} tokens in / {ev.tokens_out or 0} out"
                head = f"{ev.exp_id}: {ev.role} ({ev.model}) attempt {ev.attempt}"
                if ev.message == "reply":
                    return f"{head}: replied in {ev.duration_s or 0:.1f} s{tok}"
                return f"{head}: unusable after {ev.duration_s or 0:.1f} s{tok}: {_one_line(ev.text)}"
            if kind == "AgentStep":
                if ev.by == "fallback":
                    return f"{ev.exp_id}: {ev.role}: the built-in {ev.role} answered this step"
                return None
            if kind == "LLMStatus":
                self.llm_label = ev.detail
                return None
            if kind == "Warning":
                self.warnings.append(ev.message)
                return f"warning: {ev.message}"
            if kind == "ApprovalRequested":
                return f"{ev.exp_id}: waiting for approval (not possible headless; use the console)"
            if kind == "ExperimentFinished":
                self.finished.append(ev)
                f = _fitness_text(ev)
                promo = _PROMOTION.get(getattr(ev, "promotion", ""), "")
                return (f"{ev.exp_id}: {ev.name} {ev.status}, fitness {f}" + (f", {promo}" if promo else "")
                        + (f" ({ev.reason})" if ev.reason else ""))
        return None

    def render(self) -> Group:
        with self.lock:
            el = time.monotonic() - self.t0
            done = sum(1 for f in self.finished if f.reason != "seed measured")
            head = Text.assemble(("asiarch ", "bold"), (f"{self.state}", "cyan"),
                                 f"  experiments {done}" + (f"/{self.budget}" if self.budget else ""),
                                 f"  elapsed {el / 60:.1f} min")
            cur = self.current
            lines = [head]
            if self.llm_label and self.llm_label != "builtin":
                lines.append(Text(f"  llm: {self.llm_label}", style="dim"))
            if cur:
                secs = time.monotonic() - cur.get("started", time.monotonic())
                lines.append(Text(f"  {cur.get('id')} ← {cur.get('parent') or '-'}  stage: {cur.get('stage')} "
                                  f"({secs:.0f} s)", style="bold"))
                if cur.get("line"):
                    lines.append(Text("  " + cur["line"], style="dim"))
            for w in self.warnings[-2:]:
                lines.append(Text("  ! " + w[:150], style="yellow"))
            if self.finished:
                lines.append(_table(self.finished[-8:]))
            return Group(*lines)


_PROMOTION = {"promoted": "new best", "tied": "tied with best (within noise)", "below": "below best",
              "single_seed": "one seed (not compared with best)"}


def _fitness_text(ev: Any) -> str:
    """``0.612 ± 0.021 (3 seeds)`` from an ExperimentFinished event (``n/a`` when unscored)."""
    from agents.stats import format_spread, summarize

    if ev.fitness is None:
        return "n/a"
    s = summarize(((ev.fitness_components or {}).get("fitness_seeds") or {}).values())
    return format_spread(ev.fitness, s.std if s else None, s.n if s else 1) if s and s.n >= 2 else f"{ev.fitness:.3f}"


def _one_line(text: str, n: int = 300) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"


def agents_table(agents: dict[str, dict[str, Any]], specs: dict[str, str] | None = None) -> Table:
    """Per role: backend, steps the model answered vs the built-in fallback, calls (failed),
    time per call, tokens ("~": estimated)."""
    from agents.llm_session import ROLES, format_tally

    t = Table(show_header=True, header_style="bold", expand=False,
              caption="steps: answered by the model / by the built-in fallback; time: mean / max per call "
                      "(failed calls included); tokens in/out, ~ = estimated")
    for col in ("role", "model", "steps", "calls", "time", "tokens"):
        t.add_column(col, no_wrap=col in ("role", "steps"))
    for role in ROLES:
        tl = agents.get(role)
        spec = (specs or {}).get(role) or ", ".join((tl or {}).get("specs") or []) or "builtin"
        spec = spec.split(":", 1)[1].split("@", 1)[0] if spec.startswith(("openai:", "ollama:")) else spec
        if tl is None:
            t.add_row(role, spec, "-", "-", "-", "-")
            continue
        f = format_tally(tl)
        style = "red" if tl["fallback"] and not tl["llm"] else ("yellow" if tl["fallback"] else "")
        t.add_row(role, spec, Text(f["answered"], style=style), f["calls"], f["time"], f["tokens"])
    return t


def _table(finished: list[Any]) -> Table:
    t = Table(show_header=True, header_style="bold", expand=False)
    for col in ("id", "name", "status", "fitness", "probe mean", "val bpb", "time"):
        # the name gives way on a narrow terminal; a fitness with its spread stays on one line
        t.add_column(col, no_wrap=col != "name", overflow="ellipsis" if col == "name" else "fold")
    for ev in finished:
        m = ev.metrics or {}
        style = {"accepted": "green", "failed": "red", "rejected": "yellow", "too_slow": "magenta",
                 "stopped_early": "blue"}.get(ev.status, "")
        t.add_row(ev.exp_id or "", ev.name[:40], Text(ev.status, style=style),
                  _fitness_text(ev) if ev.fitness is not None else "-",
                  f"{m['probe_mean']:.3f}" if isinstance(m.get("probe_mean"), (int, float)) else
                  (f"({m['probe_mean_partial']:.3f} partial)" if isinstance(m.get("probe_mean_partial"), (int, float))
                   else "-"),
                  f"{m['val_bpb']:.3f}" if isinstance(m.get("val_bpb"), (int, float)) else "-",
                  f"{ev.duration_s:.0f} s" if ev.duration_s else "-")
    return t


def ask_approval(loop: Any, ev: Any, ask: Any = None) -> str:
    """Headless supervised mode: show a checked proposal and ask approve / reject / edit at the
    terminal; send the answer to the loop. Returns the choice (``approve``, ``reject``, ``edit``)."""
    import click
    from rich.markdown import Markdown
    from rich.markup import escape
    from rich.panel import Panel

    ask = ask or (lambda text, **kw: typer.prompt(text, **kw))
    console.print(Panel(Markdown(ev.motivation or ""), title=f"proposal {ev.exp_id}: {ev.name}", expand=False))
    for c in ev.checks or []:
        mark = "[green]pass[/]" if c.get("passed") else "[red]fail[/]"
        console.print(f"  {mark} " + escape(f"{c.get('name')}: {c.get('value', '')} {c.get('reason', '')}"),
                      highlight=False)
    while True:
        choice = str(ask("approve, reject or edit? [a/r/e]", default="a")).strip().lower()[:1]
        if choice == "a":
            loop.approve()
            return "approve"
        if choice == "r":
            loop.reject(str(ask("reason (sent to the researcher)", default="rejected by the user")))
            return "reject"
        if choice == "e":
            # $VISUAL / $EDITOR (else vi); None when the editor exits without saving: unchanged
            edited = click.edit(ev.code, extension=".py", require_save=True)
            loop.approve(code=edited if edited is not None else ev.code)
            return "edit"
        console.print("answer a, r or e")


def _open_loop(lab: Path, mode: Optional[str], can_ask: bool, llm: Optional[str], scale: Optional[str],
               scale_factor: float, names: Optional[tuple[str, ...]], llm_context: Optional[int],
               **loop_kw: Any) -> Any:
    """The lab (a demo lab created when missing) and its loop with the command's overrides."""
    from agents.loop import Loop
    from archive.config import ConfigError
    from archive.embed import EmbedderUnavailable
    from archive.lab import Lab, LabError
    from archive.lock import LabBusyError

    try:
        if Lab.is_lab(lab):
            opened = Lab.open(lab)
        else:
            console.print(f"creating a demo lab at {lab}", highlight=False)
            opened = Lab.init(lab, demo=True)
        if mode is None and opened.config.loop.mode == "supervised" and not can_ask:
            console.print("the lab's mode is supervised, which needs a terminal to answer at; running "
                          "autonomous", highlight=False)
            mode = "autonomous"
        scale_obj: Any = scale
        if scale_factor != 1.0:
            from training.scales import scaled_down

            scale_obj = scaled_down(scale or opened.config.loop.scale, scale_factor)
        if llm_context is not None:
            opened.config.llm.context_length = int(llm_context)
        return Loop(opened, llm=llm, mode=mode, scale=scale_obj, baselines=names, lock_timeout=5.0, **loop_kw)
    except (LabError, ConfigError, EmbedderUnavailable, LabBusyError, ValueError) as exc:
        fail(str(exc), 2)


def _negotiate(loop: Any) -> None:
    """Negotiate the LLM servers before the loop starts: the header says what each role runs
    on; a server without the configured model stops here with a clear message."""
    from agents.llm import ModelMissing

    warnings: list[Any] = []
    try:
        loop.llm.negotiate(warnings.append)
    except ModelMissing as exc:
        loop.lab.close()
        fail(f"{exc}. Check the model name in --llm or the lab's [llm] config.", 2)
    for line in loop.llm.describe():
        console.print(line, highlight=False, soft_wrap=True)
    for w in warnings:
        if type(w).kind == "Warning":
            console.print(f"warning: {w.message}", highlight=False, soft_wrap=True)
    loop.llm.emit = None  # the loop sets its own emitter when it starts


def _follow(loop: Any, display: _Display) -> None:
    """Start the loop and show its events until it ends: a live display at a terminal (asking
    for approvals there), plain lines otherwise. Ctrl-C stops after the current stage; a second
    Ctrl-C quits at once."""
    from agents.events import ApprovalRequested

    q = loop.event_queue()
    stop_requested = {"n": 0}

    def _sigint(signum: int, frame: Any) -> None:
        stop_requested["n"] += 1
        if stop_requested["n"] == 1:
            console.print("[yellow]stopping after the current stage (Ctrl-C again to quit now)[/]")
            loop.stop()
        else:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, _sigint)
    loop.start()
    try:
        if console.is_terminal:
            with Live(display.render(), console=console, refresh_per_second=4, transient=True) as live:
                while True:
                    try:
                        ev = q.get(timeout=0.25)
                    except Exception:
                        live.update(display.render())
                        continue
                    if ev is None:
                        break
                    display.on_event(ev)
                    if isinstance(ev, ApprovalRequested):
                        live.stop()
                        ask_approval(loop, ev)
                        live.start()
                    live.update(display.render())
        else:
            while True:
                ev = q.get()
                if ev is None:
                    break
                line = display.on_event(ev)
                if line:
                    console.print(line, highlight=False, soft_wrap=True, markup=False)
    finally:
        signal.signal(signal.SIGINT, old)
        loop.join(10)


def _print_summary(loop: Any, display: _Display) -> None:
    """The final tables (experiments, agents) and one line on how the run ended."""
    summary = loop.summary
    if display.finished:
        console.print(_table(display.finished))
    if summary.agents:
        console.print(agents_table(summary.agents, {r: (str(s) if s.backend != "builtin" else "builtin")
                                                    for r, s in loop.role_specs.items()}))
        used = sum(t["llm"] for t in summary.agents.values())
        asked = sum(t["llm"] + t["fallback"] for t in summary.agents.values())
        if asked and not used:
            console.print("[bold red]no LLM reply was used in this run[/]: every model step fell back to the "
                          "built-in agents (see the warnings and the transcripts).", highlight=False)
    console.print(f"{len(summary.experiments)} experiment(s) in {summary.seconds / 60:.1f} min; "
                  f"loop {summary.state}.", highlight=False)


def run(
    lab: LabArg = None,
    lab_opt: LabOpt = None,
    headless: bool = typer.Option(False, "--headless", help="Run without the console (required for now)."),
    experiments: Optional[int] = typer.Option(None, "--experiments", "-n", min=0,
                                              help="Stop after N experiments (0 = no limit; default: the lab's config)."),
    hours: Optional[float] = typer.Option(None, "--hours", min=0.0, help="Stop after H hours (0 = no limit)."),
    mode: Optional[Mode] = typer.Option(None, "--mode", help="Default: the lab's config."),
    llm: Optional[str] = typer.Option(None, "--llm", callback=check_llm_spec,
                                      help="Backend of every agent: builtin, ollama:MODEL\\[@HOST] or openai:MODEL@URL "
                                           "(default: the lab's \\[llm] config)."),
    scale: Optional[ScaleName] = typer.Option(None, "--scale", help="Default: the lab's config."),
    scale_factor: float = typer.Option(1.0, "--scale-factor", min=0.001, max=1.0,
                                       help="Multiply every training step count by this (quick smoke runs)."),
    baselines: Optional[str] = typer.Option(None, "--baselines", callback=check_mixer_names,
                                            help="Comma-separated reference mixers to measure (default: all)."),
    timeout: float = typer.Option(300.0, "--llm-timeout", help="Seconds to wait for an LLM server."),
    llm_context: Optional[int] = typer.Option(None, "--llm-context", min=256,
                                              help="The LLM server's context in tokens when it does not report "
                                                   "it (default: the lab's \\[llm] context_length)."),
) -> None:
    """Run the research loop on LAB headless: sample, research, check, evaluate, analyse, commit
    (LAB is created as a demo lab if missing)."""
    path = lab_path(lab, lab_opt)
    if not headless:
        fail("`run` needs --headless for now; the interactive console is `asiarch-tui LAB`.", 2)
    can_ask = sys.stdin.isatty() and console.is_terminal
    if mode is Mode.supervised and not can_ask:
        fail("--mode supervised waits for approve / reject / edit at a terminal; this run has none "
             "(stdin or stdout is not a terminal). Use the console (`asiarch-tui LAB`) or --mode autonomous.", 2)
    loop = _open_loop(path, value(mode), can_ask, llm, value(scale), scale_factor, baselines, llm_context,
                      experiments=experiments, hours=hours, timeout_s=timeout)
    _negotiate(loop)
    display = _Display(loop.budget_experiments or None)
    _follow(loop, display)
    _print_summary(loop, display)
    if loop.summary.state == "error":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``run`` command."""
    app.command("run")(run)
