"""Archive commands: ``init [LAB]``, ``status [LAB]``, ``show ID [LAB]``, ``reindex [LAB]``,
``log [LAB]`` (the lab as in ``asiarch_tui.cli_common``: ``LAB`` or ``--lab``, default
``$ASIARCH_LAB``, else ``./lab``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from archive.config import ConfigError
from archive.embed import EmbedderUnavailable
from asiarch_tui.cli_common import LabArg, LabOpt, ScaleName, err_console, lab_path, user_errors
from archive.lab import Lab, LabError
from archive.lineage import lineage_tree, sparkline
from archive.lock import LabBusyError
from archive.record import RecordError
from archive.store import ArchiveError

console = Console()

_ERRORS = (LabError, ConfigError, ArchiveError, LabBusyError, EmbedderUnavailable, RecordError)


def _open(lab: Path) -> Lab:
    opened = Lab.open(lab)
    for line in opened.recovered:
        err_console.print(f"[yellow]recovered:[/] {escape(line)}", highlight=False)
    return opened


def _resolve_id(lab: Lab, ref: str) -> str:
    ref = ref.strip()
    if ref == "best":
        best = lab.store.best()
        if best is None:
            raise ArchiveError(f"{lab.path} has no best experiment yet (the loop measures the seed first)")
        return best.id
    if ref.isdigit():
        return f"{int(ref):04d}"
    name = ref if ref.startswith("exp/") else "exp/" + ref
    for e in lab.store.entries():
        if e.tag == name or e.tag.startswith(name):
            return e.id
    raise ArchiveError(f"no experiment {ref!r} in {lab.path} (give an id like 3 or 0003, or a tag)")


def init(lab: LabArg = None, lab_opt: LabOpt = None,
         full: bool = typer.Option(False, "--full", help="Use the config defaults (explore scale) instead of the quick demo settings.")) -> None:
    """Create a lab: a commented asiarch.toml, the git archive with the seed DeltaNet, the indexes."""
    with user_errors(*_ERRORS):
        t = time.perf_counter()
        new = Lab.init(lab_path(lab, lab_opt), demo=not full)
        seed = new.store.get("0000")
        p = escape(str(new.path))
        console.print(f"[green]created lab[/] {p} in {time.perf_counter() - t:.1f} s")
        console.print(f"  config    {p}/asiarch.toml (scale {new.config.loop.scale}; every setting is documented there)")
        console.print(f"  archive   {p}/archive  seed {seed.id} {seed.name} ({seed.tag}), not measured yet")
        for line in new.recovered:
            err_console.print(f"[yellow]note:[/] {escape(line)}", highlight=False)
        console.print(f"  lineage   git --git-dir {p}/archive log --graph --oneline --all")
        new.close()


def status(lab: LabArg = None, lab_opt: LabOpt = None,
           last: int = typer.Option(10, "--last", "-n", help="How many recent experiments to list.")) -> None:
    """Counts, the best experiment, the last experiments and a fitness sparkline."""
    with user_errors(*_ERRORS):
        opened = _open(lab_path(lab, lab_opt))
        docs = opened.index.all()
        counts = opened.index.counts()
        best_id = opened.store.best_id()  # moved by the promotion rule, not the highest number
        best = next((d for d in docs if d["id"] == best_id), None)
        console.print(f"[bold]{escape(str(opened.path))}[/]  {len(docs)} experiments: "
                      f"[green]{counts.get('accepted', 0)} accepted[/], [red]{counts.get('failed', 0)} failed[/], "
                      f"[yellow]{counts.get('rejected', 0)} rejected[/]   scale {opened.config.loop.scale}, mode {opened.config.loop.mode}")
        if best:
            spread = (f" ± {best['fitness_std']:.3f} ({best['n_seeds']} seeds)"
                      if best.get("fitness_std") is not None else "")
            iv = best.get("fitness_interval")
            console.print(f"best: [cyan]{best['id']}[/] {escape(best['name'])}  fitness [magenta]{best['fitness']:.3f}"
                          f"{spread}[/]" + (f"  interval [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "") + f"  ({best['tag']})")
        else:
            console.print("best: none measured yet (the loop evaluates the seed first)")
        fits = [d["fitness"] if d["status"] == "accepted" else None for d in docs]
        console.print(f"fitness  [magenta]{sparkline(fits)}[/]  (last {min(len(fits), 60)} experiments, · = none)")
        table = Table(box=None, header_style="bold")
        for col in ("id", "name", "status", "fitness", "parent", "scale", "created"):
            table.add_column(col)
        for d in docs[-last:][::-1]:
            st = {"accepted": "green", "failed": "red", "rejected": "yellow"}.get(d["status"], "")
            table.add_row(d["id"], Text(d["name"]), f"[{st}]{d['status']}[/]",
                          "–" if d["fitness"] is None else f"{d['fitness']:.3f}", d["parent"] or "–",
                          d["scale"] or "–", d["created"])
        console.print(table)
        _agents_status(opened)
        opened.close()


def _agents_status(opened: Any) -> None:
    """Per role: steps answered by the model vs the built-in fallback, over the whole archive."""
    from agents.llm_session import ROLES, format_tally, tally

    t = tally(opened.store.all())
    asked = {r: v for r, v in t.items() if v["llm"] or v["fallback"]}
    if not asked:
        return
    console.print("agents (steps answered by the model / by the built-in fallback):")
    for role in ROLES:
        if role in asked:
            f = format_tally(asked[role])
            specs = ", ".join(asked[role]["specs"])
            console.print(f"  {role:<10} {escape(specs)}: {f['answered']}; calls {f['calls']}, "
                          f"time per call {f['time']}, tokens {f['tokens']}", highlight=False)


def show(exp: str = typer.Argument(..., help="Experiment id (3 or 0003), tag, or best."),
         lab: LabArg = None, lab_opt: LabOpt = None,
         code: bool = typer.Option(True, "--code/--no-code", help="Show the mixer code."),
         as_json: bool = typer.Option(False, "--json", help="Print the whole record as JSON.")) -> None:
    """One experiment: its record, code (highlighted) and metrics."""
    with user_errors(*_ERRORS):
        opened = _open(lab_path(lab, lab_opt))
        rec = opened.store.get(_resolve_id(opened, exp))
        if as_json:
            print(json.dumps(rec.to_dict(), indent=2, ensure_ascii=False))
            opened.close()
            return
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        comps = rec.fitness_components or {}
        fit = "–" if rec.fitness is None else f"{rec.fitness:.4f}"
        if comps:
            fit += "  (" + ", ".join(f"{k} {v:.3f}" for k, v in comps.items() if isinstance(v, (int, float))) + ")"
        for k, v in (("id", rec.id), ("tag", rec.tag), ("commit", opened.store.commit_of(rec.id)[:12]),
                     ("status", rec.status), ("fitness", fit), ("parent", rec.parent or "–"),
                     ("references", ", ".join(rec.references) or "–"), ("scale", rec.scale or "–"),
                     ("researcher", rec.researcher), ("created", rec.created),
                     ("operators", ", ".join(rec.operators) or "–"), ("problem", rec.problem or "–")):
            head.add_row(k, Text(str(v)))
        parts: list = [Panel(head, title=escape(f"{rec.id} {rec.name}"), border_style="cyan"),
                       Panel(Text(rec.motivation.strip() or "–"), title="motivation")]
        if rec.analysis.strip():
            parts.append(Panel(Text(rec.analysis.strip()), title="analysis"))
        if rec.metrics:
            mt = Table(box=None, header_style="bold")
            mt.add_column("metric")
            mt.add_column("value", justify="right")
            for k, v in rec.metrics.items():
                if k in ("loss_curve",):
                    continue
                if isinstance(v, dict):
                    for kk, vv in v.items():
                        mt.add_row(Text(f"{k}.{kk}"), Text(_fmt(vv)))
                else:
                    mt.add_row(Text(k), Text(_fmt(v)))
            parts.append(Panel(mt, title="metrics"))
        else:
            parts.append(Panel("not measured", title="metrics"))
        if code:
            parts.append(Panel(Syntax(rec.code, "python", line_numbers=True, theme="ansi_dark"), title="mixer.py"))
        console.print(Group(*parts))
        opened.close()


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def reindex(lab: LabArg = None, lab_opt: LabOpt = None,
            novelty: bool = typer.Option(True, "--novelty/--no-novelty", help="Also rebuild the novelty index (embeds every motivation)."),
            scale: Optional[ScaleName] = typer.Option(None, "--scale", help="Re-score against the seed measured at "
                                                      "this scale (default: the lab's configured scale).")) -> None:
    """Rebuild index.json (and novelty.hnsw) from the archive, and re-score every experiment
    from its stored metrics against the current yardstick (the seed's measurement at the lab's
    scale), moving the best tag accordingly. Without a yardstick every fitness becomes null."""
    from agents.yardstick import rescore_lab

    with user_errors(*_ERRORS):
        opened = _open(lab_path(lab, lab_opt))
        try:
            out = opened.reindex(novelty=novelty)
            msg = f"index: {out['experiments']} experiments in {out['index_seconds']:.2f} s"
            if novelty:
                msg += f"; novelty: {out['motivations']} motivations in {out['novelty_seconds']:.2f} s"
            console.print(Text.assemble(("rebuilt ", "green"), msg))
            rep = rescore_lab(opened, scale.value if scale else None)
            if rep["yardstick"] is None:
                console.print(Text(f"no yardstick: {rep['reason']}; {rep['rescored']} experiments have no fitness "
                                   "until the seed is measured (asiarch-tui baselines LAB)", style="yellow"))
            else:
                moved = (f"; best moved {rep['best_before']} -> {rep['best']}" if rep["best_moved"]
                         else f"; best {rep['best'] or 'none'}")
                console.print(Text(f"re-scored {rep['scored']} experiments against yardstick {rep['yardstick']} "
                                   f"({rep['unscored']} without fitness: failed, too slow, rejected, partial or "
                                   f"unmeasured; {len(rep['changed'])} changed){moved}"))
        finally:
            opened.close()


def log(lab: LabArg = None, lab_opt: LabOpt = None,
        root: Optional[str] = typer.Option(None, "--from", help="Show only this experiment's descendants."),
        max_depth: int = typer.Option(24, "--depth", help="Deepest branching shown before summarising.")) -> None:
    """The lineage tree (parent → children), from git."""
    with user_errors(*_ERRORS):
        opened = _open(lab_path(lab, lab_opt))
        start = _resolve_id(opened, root) if root else None
        best = opened.store.best()
        tree = lineage_tree(opened.index.all(), opened.store.children_map(), root=start,
                            best_id=best.id if best else None, max_depth=max_depth)
        console.print(tree)
        opened.close()


def register(app: typer.Typer) -> None:
    """Add the archive commands to the ``asiarch-tui`` app."""
    app.command("init")(init)
    app.command("status")(status)
    app.command("show")(show)
    app.command("reindex")(reindex)
    app.command("log")(log)


if __name__ == "__main__":  # pragma: no cover
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(_app)
    _app(args=sys.argv[1:])
