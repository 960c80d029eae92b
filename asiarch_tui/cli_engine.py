"""``asiarch-tui eval FILE`` and ``asiarch-tui baselines``: the evaluation engine from the shell.

- ``eval FILE [LAB] [--scale S] [--seed N] [--json] [--cpu-limit S] [--wall-limit S]`` evaluates
  one mixer file in the sandbox (with LAB: guarded as LAB's loop would) and prints a table of
  its metrics, or the metrics as JSON, also when a guard ended the run early (partial metrics).
  Exit codes: 0 the evaluation finished; 1 the mixer is broken (error, or a run stopped by the
  monitor: NaN, divergence, leak; the reason as one paragraph); 2 a usage error (missing file,
  unknown scale); 3 a guard ended the run (``too_slow``: over the CPU-time cap; ``hung``: over
  the wall-time hang guard).
- ``baselines [LAB] [--scale S] [--seeds N] [--json] [--out FILE]`` evaluates the six reference
  mixers with seeds 0..N-1 under a progress bar and prints them ranked; with LAB, measures the
  lab's seed and the reference baselines not measured yet at the lab's scale, into the lab.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from asiarch_tui.cli_common import LabOpt, ScaleName, check_mixer_names, fail, lab_path

LITERATURE_ORDER = (
    "Literature order on recall at equal state size (Zoology, Gated DeltaNet papers): softmax attention > "
    "Gated DeltaNet >= DeltaNet > GLA > RetNet >= linear attention."
)


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


def check_gpu_scale(scale: str, force: bool = False) -> None:
    """A usage error for a GPU scale on a machine without CUDA, unless ``force``."""
    from training.scales import SCALES

    if SCALES[scale].device == "cuda" and not force:
        import torch

        if not torch.cuda.is_available():
            fail(f"the {scale} scale is meant for a GPU and no CUDA device is available here; on this CPU it "
                 "would take many hours. Use --scale explore (or probe), or pass --force to run it anyway.", 2)


def _progress() -> Any:
    """A rich progress bar on stderr, drawn only when stderr is a terminal (else it prints
    nothing but what is printed through its console)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal,
    )


#: Exit code of ``eval`` when a guard (too_slow, hung) ended the run.
EXIT_GUARD = 3


def probe_mean_text(metrics: dict) -> str:
    """The probe mean as shown to a user: the whole suite's mean, or, for a partial run, the
    partial mean clearly labelled with how many probes it covers (never passed off as the suite)."""
    pm = metrics.get("probe_mean")
    if pm is not None:
        return _fmt(pm)
    part, done, total = metrics.get("probe_mean_partial"), metrics.get("probes_done"), metrics.get("probes_total")
    if part is None:
        return "-"
    return f"- (partial: {_fmt(part)} over {done}/{total} probes)"


def metrics_table(metrics: dict, title: str):
    """A rich table of one evaluation's metrics dict (cells are plain text, never markup)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    status = str(metrics.get("status"))
    if metrics.get("partial"):
        status += " (partial metrics)"
    table.add_row("status", Text(status))
    for key in ("mixer_params", "params"):
        table.add_row(key, _fmt(metrics.get(key)))
    table.add_row("probe_mean", Text(probe_mean_text(metrics)))
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
    if metrics.get("steps_planned"):
        table.add_row("steps done", f"{metrics.get('steps_done', 0):,}/{metrics['steps_planned']:,}")
    table.add_row("CPU seconds", _fmt(metrics.get("cpu_seconds"), 1))
    table.add_row("wall seconds", _fmt(metrics.get("wall_seconds"), 1))
    la0, la1 = metrics.get("load_avg_start"), metrics.get("load_avg_end")
    if la0 and la1:
        table.add_row("load average (start, end)", f"{la0[0]:.2f}, {la1[0]:.2f}")
    if metrics.get("throughput_vs_seed") is not None:
        table.add_row("throughput vs seed", f"{metrics['throughput_vs_seed']:.2f}x")
    if metrics.get("stop_reason"):
        table.add_row("stop_reason", Text(str(metrics["stop_reason"])))
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


def _lm_eval_task_list(text: str, spec: dict) -> list[str]:
    """The ``--lm-eval-tasks`` names, checked before anything trains: shipped tasks only (the
    sandbox has no network, so lm-eval's hub tasks cannot load their data there)."""
    from training.lm_eval_bridge import DEFAULT_TASKS, hub_tasks

    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        fail("--lm-eval-tasks names no task.", 2)
    if not spec.get("lm_steps"):
        fail(f"the {spec.get('name')} scale trains no language model: lm-eval tasks need verify-mini or verify.", 2)
    hub = hub_tasks(tasks)
    if hub:
        fail(f"{', '.join(hub)}: not shipped with asiarch. lm-eval's own tasks download their data from the Hugging "
              "Face hub and the sandbox never has a network. Shipped tasks: " + ", ".join(DEFAULT_TASKS)
              + ". For trusted code on a machine with a network: training.evaluate.evaluate_class(..., "
              "lm_eval_allow_hub=True).", 2)
    return tasks


def _eval_guards(scale: str, lab: Optional[Path], cpu_limit: Optional[float], wall_limit: Optional[float]) -> Any:
    """The guards of ``eval``: from LAB's measured seed and [guards] when given, explicit limits
    on top; without either, no CPU cap and the scale's hang guard."""
    from training.guards import Guards
    from training.scales import get_scale

    s = get_scale(scale)
    if lab is not None:
        from agents.yardstick import load_baselines
        from archive.config import ConfigError, load_config
        from training.mixers import SEED_MIXER

        try:
            cfg = load_config(Path(lab) / "asiarch.toml")
        except ConfigError as exc:
            fail(str(exc), 2)
        seed = load_baselines(lab, scale).get(SEED_MIXER)
        g = Guards.relative_to(seed, cfg.guards, expected_s=s.expected_seconds, scale_name=s.name)
    else:
        g = Guards.relative_to(None, expected_s=s.expected_seconds)
    if cpu_limit is not None or wall_limit is not None:
        from dataclasses import replace

        g = replace(g, cpu_limit_s=cpu_limit if cpu_limit is not None else g.cpu_limit_s,
                    wall_limit_s=wall_limit if wall_limit is not None else g.wall_limit_s)
    return g


def _lab_baselines(lab_path: Path, scale: Optional[str], names: tuple[str, ...], as_json: bool, force: bool) -> None:
    """``baselines LAB``: measure the lab's seed and pending reference baselines (sandboxed, one
    seed: the lab's), print progress ("measuring baselines 2/5") and the lab's ranking."""
    from rich.console import Console

    from agents.events import BaselineProgress, LogLine, Warning
    from agents.loop import Loop
    from archive.config import ConfigError
    from archive.lab import Lab, LabError
    from archive.lock import LabBusyError
    from training.evaluate import aggregate_runs, rank_key
    from training.mixers import SEED_MIXER

    try:
        opened = Lab.open(lab_path)
    except (LabError, ConfigError) as exc:
        fail(str(exc), 2)
    scale = scale or opened.config.loop.scale
    check_gpu_scale(scale, force)
    err = Console(stderr=True)
    loop = Loop(opened, llm="builtin", scale=scale, baselines=names, experiments=0)

    def on_event(e: Any) -> None:
        if isinstance(e, BaselineProgress):
            what = f"measuring the seed ({e.name})" if e.seed else f"measuring baselines {e.index}/{e.total}: {e.name}"
            err.print(what if e.status == "started" else f"  {e.detail}", highlight=False, markup=False)
        elif isinstance(e, LogLine) and e.source == "loop":
            err.print(e.line, highlight=False, markup=False)
        elif isinstance(e, Warning):
            err.print(f"warning: {e.message}", highlight=False, markup=False)

    loop.subscribe(on_event)
    try:
        with opened.lock(timeout=5.0):
            ys = loop.measure_seed()
            if ys is not None:
                loop.rescore_if_needed()
                loop.ensure_seed_measured()
            loop._measure_remaining_baselines()
    except LabBusyError:
        fail(f"{lab_path} is busy: a loop is running on it (it measures the baselines between experiments; "
             "stop it first or let it do so).", 1)
    finally:
        opened.close()
    cached = loop._cached_baselines()
    results = sorted((aggregate_runs(n, [cached[n]]) for n in (SEED_MIXER, *names) if n in cached), key=rank_key)
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2, default=str) + "\n")
    else:
        console = Console()
        console.print(ranking_table(results, scale, 1, wide=console.width >= 110))
    if ys is None:
        fail(f"no yardstick in {lab_path}: {loop.yardstick_missing()}.", 1)
    bad = [f"{r['name']} ({r['status']}: {r['problem']})" for r in results if r["status"] != "ok"]
    if bad:
        fail(f"some reference mixers did not finish: {'; '.join(bad)}.", 1)


def _evaluate_file(file: Path, scale: str, seed: int, guards: Any, verbose: bool, unsafe_no_sandbox: bool,
                   lm_eval_tasks: Optional[str]) -> Any:
    """Run ``file``'s evaluation in the sandbox under a progress bar; the sandbox's result."""
    import tempfile

    from rich.console import Console
    from rich.markup import escape

    from agents.engineer import scale_spec
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
            spec = scale_spec(scale, as_dict=True)  # the scale as this process knows it
            if lm_eval_tasks is not None:
                spec["lm_eval_tasks"] = _lm_eval_task_list(lm_eval_tasks, spec)
            return run_sandboxed("evaluate", {"path": str(file), "scale": spec, "seed": seed,
                                              "guards": guards.to_dict()}, tmp,
                                 limits=Limits.for_evaluation(spec, guards=guards, unsafe_no_sandbox=unsafe_no_sandbox),
                                 on_line=on_log, on_event=on_event, trusted=_is_reference(file))
        except SandboxError as exc:
            fail(str(exc), 2)


def _eval_metrics(file: Path, res: Any, scale: str, seed: int, guards: Any) -> dict:
    """The metrics of a sandboxed evaluation; a run the kernel-level backstop above the guards
    ended still gets a guard's verdict; no metrics at all is a failure (exit 1)."""
    metrics = (res.result or {}).get("metrics")
    if (not isinstance(metrics, dict) or "status" not in metrics) and res.reason and (
            res.reason.startswith("killed after") or ("exceeded" in res.reason and "CPU time" in res.reason)):
        from agents.engineer import killed_metrics

        metrics = killed_metrics(scale, seed, "hung" if res.reason.startswith("killed") else "too_slow",
                                 res.reason, guards.to_dict(), res.duration_s)
    if not isinstance(metrics, dict) or "status" not in metrics:
        fail(f"{file} could not be evaluated: {res.reason or 'the sandbox returned no metrics'}", 1)
    return metrics


def _eval_exit(file: Path, metrics: dict) -> None:
    """Exit 1 for a broken mixer, ``EXIT_GUARD`` for a run a guard ended; return when it finished."""
    if metrics["status"] == "error":
        fail(f"{file} could not be evaluated. {metrics['error']}", 1)
    if metrics["status"] == "stopped":
        fail(f"the evaluation of {file} was stopped: {metrics['stop_reason']}.", 1)
    if metrics["status"] == "rejected":
        fail(f"the evaluation of {file} was rejected: {metrics['stop_reason']}.", 1)
    if metrics["status"] in ("too_slow", "hung"):
        fail(f"the evaluation of {file} ended {metrics['status']} after {metrics.get('steps_done', 0)}/"
             f"{metrics.get('steps_planned', 0)} steps: {metrics['stop_reason']}. The metrics above are "
             "partial.", EXIT_GUARD)


def _positive_seconds(v: Optional[float]) -> Optional[float]:
    """``--cpu-limit`` / ``--wall-limit`` callback: a positive number of seconds."""
    if v is not None and not v > 0:
        raise typer.BadParameter(f"must be a positive number of seconds, not {v}.")
    return v


def eval_cmd(
    file: Path = typer.Argument(..., help="A Python file defining class Mixer(nn.Module)."),
    lab: Optional[Path] = typer.Argument(
        None, metavar="LAB", show_default=False,
        help="Guard the run as LAB's loop would: CPU cap and hang guard relative to the lab's measured seed at "
             "this scale, with the factors of its guards section (default: no lab)."),
    lab_opt: LabOpt = None,
    scale: ScaleName = typer.Option(ScaleName.explore, "--scale", help="The evaluation scale."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the evaluation."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON (also for a run a guard ended)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream the training log lines."),
    force: bool = typer.Option(False, "--force", help="Run a GPU scale even without a GPU."),
    cpu_limit: Optional[float] = typer.Option(None, "--cpu-limit", callback=_positive_seconds,
                                              help="End the run as too_slow after this many CPU seconds."),
    wall_limit: Optional[float] = typer.Option(None, "--wall-limit", callback=_positive_seconds,
                                               help="End the run as hung after this many wall seconds "
                                                    "(default: 20x the scale's expected time, at least 600 s)."),
    unsafe_no_sandbox: bool = typer.Option(
        False, "--unsafe-no-sandbox",
        help="Where bubblewrap is missing, run the file anyway with rlimits and an in-process guard only "
             "(no OS boundary: only for code you trust)."),
    lm_eval_tasks: Optional[str] = typer.Option(
        None, "--lm-eval-tasks", help="Comma-separated shipped lm-eval tasks replacing the scale's "
                                      "(verify-mini/verify), e.g. shakespeare_cloze,shakespeare_lastword."),
) -> None:
    """Evaluate one mixer file: the probes and, at explore/verify, byte-level LM training.
    The file runs in the sandbox (bubblewrap) like the agents' candidates; the project's
    reference mixers (training/mixers) also run where bubblewrap is missing.

    Every run does its fixed steps; wall time is no budget. Exit codes: 0 finished; 1 the mixer
    is broken (error, NaN, divergence, suspected leak) or rejected (a trained model found
    non-causal); 2 usage error; 3 a guard ended the run
    early (too_slow: over the CPU-time cap; hung: over the hang guard) - the metrics reached so
    far are still printed, marked partial."""
    from rich.console import Console

    from asiarch_tui.cli_check import check_mixer_file

    check_mixer_file(file)
    check_gpu_scale(scale.value, force)
    guards = _eval_guards(scale.value, lab_path(lab, lab_opt, default=False), cpu_limit, wall_limit)
    res = _evaluate_file(file, scale.value, seed, guards, verbose, unsafe_no_sandbox, lm_eval_tasks)
    metrics = _eval_metrics(file, res, scale.value, seed, guards)
    if as_json:
        sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
    elif metrics["status"] != "error":
        Console().print(metrics_table(metrics, f"eval {file.name} (scale {scale.value}, seed {seed})"))
    _eval_exit(file, metrics)


def _baseline_verdict(results: list[dict]) -> None:
    """Exit 1 when a reference mixer failed, ``EXIT_GUARD`` when a guard ended some runs."""
    bad = [f"{r['name']} ({r['problem']})" for r in results if r["status"] == "error"]
    if bad:
        fail(f"some reference mixers failed: {'; '.join(bad)}.", 1)
    bad = [f"{r['name']} ({r['status']}: {r['problem']})" for r in results if r["status"] in ("too_slow", "hung")]
    if bad:
        fail(f"a guard ended some runs early (their metrics are partial): {'; '.join(bad)}.", EXIT_GUARD)


def baselines_cmd(
    lab: Optional[Path] = typer.Argument(
        None, metavar="LAB", show_default=False,
        help="A lab: measure its seed and the reference baselines it has not measured yet, at the lab's "
             "scale, into the lab (default: no lab)."),
    lab_opt: LabOpt = None,
    scale: Optional[ScaleName] = typer.Option(None, "--scale", help="Default: probe, or the lab's scale."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Number of seeds (0..N-1) per mixer."),
    as_json: bool = typer.Option(False, "--json", help="Print the ranked results as JSON."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the ranked results as JSON to this file."),
    only: Optional[str] = typer.Option(None, "--only", callback=check_mixer_names,
                                       help="Comma-separated subset of the reference mixers."),
    force: bool = typer.Option(False, "--force", help="Run a GPU scale even without a GPU."),
) -> None:
    """Evaluate the six reference mixers (softmax attention, linear attention, RetNet, GLA,
    DeltaNet, Gated DeltaNet) and print them ranked. With LAB: the lab's seed (the yardstick,
    re-scoring the archive if it changed) and its pending comparisons, in the lab's sandbox."""
    from rich.console import Console

    from training.evaluate import evaluate_references
    from training.mixers import REFERENCE_MIXERS

    names = tuple(only or REFERENCE_MIXERS)  # the callback turned --only into names
    path = lab_path(lab, lab_opt, default=False)
    if path is not None:
        _lab_baselines(path, scale.value if scale else None, names, as_json, force)
        return
    scale_name = scale.value if scale else "probe"
    check_gpu_scale(scale_name, force)
    with _progress() as bar:
        task = bar.add_task(f"baselines @ {scale_name}", total=1.0)

        def on_result(name: str, seed: int, m: dict) -> None:
            msg = (f"bpb {_fmt(m.get('val_bpb'), 4)}, " if m.get("val_bpb") is not None else "") + \
                  f"probe mean {probe_mean_text(m)}, {m.get('cpu_seconds', 0):.0f} CPU s, " \
                  f"{m.get('wall_seconds', 0):.0f} s"
            if m["status"] != "ok":
                msg += f" [{m['status']}: {m.get('error') or m.get('stop_reason')}]"
            bar.console.print(f"{name} seed {seed}: {msg}", highlight=False, markup=False)

        results = evaluate_references(
            scale_name, seeds=range(seeds), names=list(names), on_result=on_result,
            progress=lambda frac, desc: bar.update(task, completed=frac, description=desc),
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        console = Console()
        console.print(ranking_table(results, scale_name, seeds, wide=console.width >= 110))
        Console().print(LITERATURE_ORDER, style="dim")
    _baseline_verdict(results)


def register(app: typer.Typer) -> None:
    """Add the ``eval`` and ``baselines`` commands to ``app``."""
    app.command("eval")(eval_cmd)
    app.command("baselines")(baselines_cmd)
