"""``asiarch-tui eval FILE`` and ``asiarch-tui baselines``: the evaluation engine from the shell.

- ``eval FILE [--scale probe|explore|verify] [--seed N] [--json]`` evaluates one mixer file
  (trusted code, in this process) and prints a table of its metrics, or the metrics as JSON.
  Exit 0 when the evaluation finished, 1 when the mixer failed (error or stopped run: the reason
  is printed as one paragraph), 2 on a usage error (missing file, unknown scale).
- ``baselines [--scale S] [--seeds N] [--json] [--out FILE]`` evaluates the six reference mixers
  with seeds 0..N-1 under a progress bar and prints them ranked.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer

LITERATURE_ORDER = (
    "Literature order on recall at equal state size (Zoology, Gated DeltaNet papers): softmax attention > "
    "Gated DeltaNet >= DeltaNet > GLA > RetNet >= linear attention."
)


def _fail(message: str, code: int) -> None:
    """Print one paragraph on stderr and exit with ``code``."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _check_scale(scale: str, force: bool = False) -> None:
    from training.scales import SCALES

    if scale not in SCALES:
        _fail(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}.", 2)
    if SCALES[scale].device == "cuda" and not force:
        import torch

        if not torch.cuda.is_available():
            _fail(f"the {scale} scale is meant for a GPU and no CUDA device is available here; on this CPU it "
                  "would take many hours. Use --scale explore (or probe), or pass --force to run it anyway.", 2)


class _NoProgress:
    """Stand-in for a rich Progress when stderr is not a terminal (pipes, tests): prints nothing
    but the per-run lines."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float = 1.0) -> int:
        return 0

    def update(self, task: int, **kwargs) -> None:
        return None


def _progress():
    """A rich progress bar on stderr when it is a terminal, else a silent stand-in."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if not Console(stderr=True).is_terminal:
        return _NoProgress()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    )


def metrics_table(metrics: dict, title: str):
    """A rich table of one evaluation's metrics dict."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("status", "mixer_params", "params", "probe_mean"):
        table.add_row(key, _fmt(metrics.get(key)))
    for name, acc in (metrics.get("probes") or {}).items():
        secs = (metrics.get("probe_seconds") or {}).get(name)
        table.add_row(f"  probe {name}", _fmt(acc) + (f"  ({secs:.1f} s)" if secs is not None else ""))
    if metrics.get("val_loss") is not None or metrics.get("train_loss") is not None:
        table.add_row("val_loss (nats/byte)", _fmt(metrics.get("val_loss"), 4))
        table.add_row("val_bpb (bits/byte)", _fmt(metrics.get("val_bpb"), 4))
        table.add_row("train_loss", _fmt(metrics.get("train_loss"), 4))
        tps = metrics.get("tokens_per_s")
        table.add_row("tokens/s", _fmt(int(tps)) if tps else "-")
        table.add_row("LM train seconds", _fmt(metrics.get("train_seconds"), 1))
    table.add_row("wall seconds", _fmt(metrics.get("wall_seconds"), 1))
    if metrics.get("stop_reason"):
        table.add_row("stop_reason", str(metrics["stop_reason"]))
    return table


SHORT_PROBE_NAMES = {"noisy_recall": "noisy", "fuzzy_recall": "fuzzy", "selective_copy": "copy",
                     "compression": "compr", "memorization": "memo"}


def ranking_table(results: list[dict], scale: str, n_seeds: int, wide: bool = True):
    """A rich table of aggregated baseline results, already ranked (columns that were not
    measured at this scale are left out; per-probe columns only when ``wide``)."""
    from rich.table import Table

    probe_names: list[str] = []
    for r in results:
        for k in r.get("probes") or {}:
            if k not in probe_names:
                probe_names.append(k)
    if not wide:
        probe_names = []
    has_lm = any(r.get("val_bpb") is not None for r in results)
    table = Table(title=f"reference mixers at scale {scale} ({n_seeds} seed{'s' if n_seeds != 1 else ''}, mean)")
    table.add_column("#", justify="right")
    table.add_column("mixer", no_wrap=True)
    if has_lm:
        table.add_column("val bpb", justify="right", no_wrap=True)
    table.add_column("probes", justify="right", no_wrap=True)
    for p in probe_names:
        table.add_column(SHORT_PROBE_NAMES.get(p, p), justify="right")
    if has_lm:
        table.add_column("tok/s", justify="right")
    table.add_column("s", justify="right")
    table.add_column("status", overflow="fold")
    for i, r in enumerate(results, 1):
        row = [str(i), r["name"]]
        if has_lm:
            bpb = _fmt(r.get("val_bpb"), 3)
            if r.get("val_bpb") is not None and n_seeds > 1:
                bpb += f"±{r['val_bpb_std']:.3f}"
            row.append(bpb)
        pm = _fmt(r.get("probe_mean"))
        if r.get("probe_mean") is not None and n_seeds > 1:
            pm += f"±{r['probe_mean_std']:.2f}"
        row.append(pm)
        row += [_fmt((r.get("probes") or {}).get(p), 2) for p in probe_names]
        if has_lm:
            tps = r.get("tokens_per_s")
            row.append(_fmt(int(tps)) if tps else "-")
        row.append(_fmt(r.get("wall_seconds"), 0))
        row.append(r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('problem')}")
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    """Add the ``eval`` and ``baselines`` commands to ``app``."""

    @app.command("eval")
    def eval_cmd(
        file: Path = typer.Argument(..., help="A Python file defining class Mixer(nn.Module)."),
        scale: str = typer.Option("explore", "--scale", help="probe | explore | verify."),
        seed: int = typer.Option(0, "--seed", help="Random seed of the evaluation."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream the training log lines."),
        force: bool = typer.Option(False, "--force", help="Run a GPU scale even without a GPU."),
        unsafe_no_sandbox: bool = typer.Option(
            False, "--unsafe-no-sandbox",
            help="Where bubblewrap is missing, run the file anyway with rlimits and an in-process guard only "
                 "(no OS boundary: only for code you trust)."),
    ) -> None:
        """Evaluate one mixer file: the probes and, at explore/verify, byte-level LM training.
        The file runs in the sandbox (bubblewrap) like the agents' candidates; the project's
        reference mixers (training/mixers) also run where bubblewrap is missing."""
        from rich.console import Console
        from rich.markup import escape

        if not file.exists():
            _fail(f"{file} does not exist. Give the path of a Python file that defines "
                  "`class Mixer(nn.Module)` (for example training/mixers/deltanet.py).", 2)
        if not file.is_file():
            _fail(f"{file} is not a file. Give the path of one Python file that defines `class Mixer(nn.Module)`.", 2)
        _check_scale(scale, force)
        import tempfile

        from asiarch_tui.cli_check import _is_reference
        from training.sandbox import Limits, SandboxError, run_sandboxed

        err = Console(stderr=True)
        on_log = (lambda line: err.print(f"[dim]| {escape(line)}[/dim]", markup=True, highlight=False)) if verbose else None
        with _progress() as bar, tempfile.TemporaryDirectory(prefix="asiarch-eval-") as tmp:
            task = bar.add_task(f"{file.name} @ {scale}", total=1.0)

            def on_event(msg: dict) -> None:
                if msg.get("event") == "progress":
                    bar.update(task, completed=float(msg.get("fraction") or 0.0),
                               description=f"{file.name}: {str(msg.get('message', ''))[:60]}")

            try:
                res = run_sandboxed("evaluate", {"path": str(file), "scale": scale, "seed": seed}, tmp,
                                    limits=Limits.for_evaluation(scale, unsafe_no_sandbox=unsafe_no_sandbox),
                                    on_line=on_log, on_event=on_event, trusted=_is_reference(file))
            except SandboxError as exc:
                _fail(str(exc), 2)
                return
        metrics = (res.result or {}).get("metrics")
        if not isinstance(metrics, dict) or "status" not in metrics:
            _fail(f"{file} could not be evaluated: {res.reason or 'the sandbox returned no metrics'}", 1)
            return
        if as_json:
            sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
        elif metrics["status"] != "error":
            Console().print(metrics_table(metrics, f"eval {file.name} (scale {scale}, seed {seed})"))
        if metrics["status"] == "error":
            _fail(f"{file} could not be evaluated. {metrics['error']}", 1)
        if metrics["status"] == "stopped":
            _fail(f"the evaluation of {file} was stopped: {metrics['stop_reason']}.", 1)

    @app.command("baselines")
    def baselines_cmd(
        scale: str = typer.Option("probe", "--scale", help="probe | explore | verify."),
        seeds: int = typer.Option(1, "--seeds", min=1, help="Number of seeds (0..N-1) per mixer."),
        as_json: bool = typer.Option(False, "--json", help="Print the ranked results as JSON."),
        out: Path | None = typer.Option(None, "--out", help="Also write the ranked results as JSON to this file."),
        only: str | None = typer.Option(None, "--only", help="Comma-separated subset of the reference mixers."),
        force: bool = typer.Option(False, "--force", help="Run a GPU scale even without a GPU."),
    ) -> None:
        """Evaluate the six reference mixers (softmax attention, linear attention, RetNet, GLA,
        DeltaNet, Gated DeltaNet) and print them ranked."""
        from rich.console import Console

        from training.evaluate import evaluate_references
        from training.mixers import REFERENCE_MIXERS

        _check_scale(scale, force)
        names = list(REFERENCE_MIXERS)
        if only:
            names = [n.strip() for n in only.split(",") if n.strip()]
            unknown = [n for n in names if n not in REFERENCE_MIXERS]
            if unknown:
                _fail(f"unknown reference mixer(s) {', '.join(unknown)}; choose from: {', '.join(REFERENCE_MIXERS)}.", 2)
        with _progress() as bar:
            task = bar.add_task(f"baselines @ {scale}", total=1.0)

            def on_result(name: str, seed: int, m: dict) -> None:
                msg = (f"bpb {_fmt(m.get('val_bpb'), 4)}, " if m.get("val_bpb") is not None else "") + \
                      f"probe mean {_fmt(m.get('probe_mean'))}, {m.get('wall_seconds', 0):.0f} s"
                if m["status"] != "ok":
                    msg += f" [{m['status']}: {m.get('error') or m.get('stop_reason')}]"
                bar.console.print(f"{name} seed {seed}: {msg}", highlight=False)

            results = evaluate_references(
                scale, seeds=range(seeds), names=names, on_result=on_result,
                progress=lambda frac, desc: bar.update(task, completed=frac, description=desc),
            )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
        if as_json:
            sys.stdout.write(json.dumps(results, indent=2) + "\n")
        else:
            console = Console()
            console.print(ranking_table(results, scale, seeds, wide=console.width >= 110))
            Console().print(LITERATURE_ORDER, style="dim")
        if any(r["status"] == "error" for r in results):
            bad = [f"{r['name']} ({r['problem']})" for r in results if r["status"] == "error"]
            _fail(f"some reference mixers failed: {'; '.join(bad)}.", 1)
