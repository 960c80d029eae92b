"""Evaluate a mixer at a scale: the probes, then (explore/verify) byte-level LM training.

``evaluate_file`` loads a mixer file in-process (trusted code; untrusted candidates go through
``training.sandbox``, whose child calls this) and returns the JSON-able metrics dict of
docs/CONTRACTS.md. ``evaluate_class`` does the same for a class already in memory.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from training import guards as G
from training import probes as P
from training.guards import GUARD_STATUSES, Guards
from training.data import CorpusError, batches, load_corpus, validation_batches
from training.leak_monitor import tolerance_of
from training.early_stop import STOPPED_EARLY, checkpoint_step
from training.lm_eval_bridge import LMEvalError
from training.scales import Scale, get_scale
from training.trainer import TrainConfig, evaluate_loss, seed_everything, torch_threads, train

LN2 = math.log(2.0)
#: The evaluation protocol (recorded in every metrics dict as ``eval_version``): bump it when a
#: change makes new numbers incomparable with earlier ones. 1: the backbone's Linear/Embedding
#: init was N(0, 0.02^2) at every width; 2: N(0, 1/d_model) (``training.backbone``).
EVAL_VERSION = 2


def eval_version(metrics: dict | None) -> int:
    """The evaluation protocol ``metrics`` were measured under (1 for dicts made before it was
    recorded)."""
    v = (metrics or {}).get("eval_version")
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else 1
#: ``progress(fraction_done, description)``
ProgressFn = Callable[[float, str], None]
#: ``checkpoint(step, model) -> reason to stop, or None``: asked at the LM run's half-way checkpoint
CheckpointFn = Callable[[int, torch.nn.Module], "str | None"]


class EvaluationError(RuntimeError):
    """The mixer cannot be evaluated (bad shape, failing constructor...); one-paragraph message."""


def _device(scale: Scale) -> torch.device:
    if scale.device == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _build_model(mixer_cls: type, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 mixer_kwargs: dict | None, device: torch.device) -> torch.nn.Module:
    from training.backbone import LanguageModel

    return LanguageModel(mixer_cls, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                         n_heads=n_heads, mixer_kwargs=mixer_kwargs).to(device)


def _count(module: torch.nn.Module) -> int:
    try:
        from training.backbone import count_parameters

        return int(count_parameters(module))
    except ImportError:  # pragma: no cover - backbone is part of the package
        return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_mixer_shape(mixer_cls: type, d_model: int, n_heads: int, mixer_kwargs: dict | None = None,
                      length: int = 16) -> torch.nn.Module:
    """Instantiate ``mixer_cls(d_model, n_heads)`` and run one forward on ``[2, length, d_model]``.

    Returns the instance; raises :class:`EvaluationError` naming the problem (constructor error,
    exception in forward, wrong output shape or type, non-finite output)."""
    name = getattr(mixer_cls, "__name__", str(mixer_cls))
    try:
        mixer = mixer_cls(d_model, n_heads, **(mixer_kwargs or {}))
    except Exception as exc:
        raise EvaluationError(f"{name}({d_model}, {n_heads}) raised {type(exc).__name__}: {exc}") from exc
    x = torch.randn(2, length, d_model, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            y = mixer(x)
    except Exception as exc:
        raise EvaluationError(
            f"{name}.forward failed on an input of shape [2, {length}, {d_model}]: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(y, torch.Tensor):
        raise EvaluationError(f"{name}.forward must return a tensor, got {type(y).__name__}.")
    if tuple(y.shape) != tuple(x.shape):
        raise EvaluationError(
            f"{name}.forward returned shape {list(y.shape)} for an input of shape {list(x.shape)}; "
            "a mixer must map [batch, length, d_model] to the same shape."
        )
    if not torch.isfinite(y).all():
        raise EvaluationError(f"{name}.forward returned NaN or infinite values on a random input.")
    return mixer


def _empty_metrics(scale: Scale, seed: int) -> dict:
    return {
        "scale": scale.name, "seed": seed, "eval_version": EVAL_VERSION, "params": None, "mixer_params": None, "val_loss": None,
        "val_bpb": None, "train_loss": None, "tokens_per_s": None, "train_seconds": 0.0, "probes": {},
        "probe_mean": None, "probe_mean_partial": None, "probes_done": 0, "probes_total": len(scale.probes),
        "probe_seconds": {}, "loss_curve": [], "status": "ok", "stop_reason": None, "error": None,
        "partial": False, "lm_tokens": 0, "steps_done": 0, "steps_planned": _planned_steps(scale),
        "tokens_done": 0, "wall_seconds": 0.0, "cpu_seconds": 0.0, "load_avg_start": None,
        "load_avg_end": None, "throughput_vs_seed": None, "guards": None,
        # the LM run's half-way checkpoint (training.early_stop) and, when one was asked, the
        # early-stopping verdict there
        "checkpoint": None, "early_stop": None,
        # the benchmark term of fitness: "lm_eval" (mean lm-eval task score, probes are then
        # diagnostics) or "probes" (probe_mean); lm_eval holds the per-task scores
        "benchmark_kind": scale.benchmark, "benchmark": None,
        "lm_eval_tasks": list(scale.lm_eval_tasks) if scale.benchmark == "lm_eval" else [], "lm_eval": None,
    }


def _planned_steps(scale: Scale) -> int:
    return sum(p.steps for p in scale.probes) + (scale.lm_steps if scale.has_lm else 0)


def is_partial(metrics: dict | None, lm_eval_pending: bool = False) -> bool:
    """Whether a metrics dict is not a complete evaluation (any status but ``ok``, a probe
    missing, or an lm-eval scale without its task scores); such metrics are never a yardstick or
    a fitness input. Dicts written before ``partial`` existed are judged by their content.
    ``lm_eval_pending``: the task scores are still to come (the sandbox harness adds them)."""
    m = metrics or {}
    if m.get("status") != "ok" or m.get("partial"):
        return True
    if m.get("benchmark_kind") == "lm_eval" and not lm_eval_pending:
        done = ((m.get("lm_eval") or {}).get("tasks") or {}) if isinstance(m.get("lm_eval"), dict) else {}
        if any(t not in done for t in (m.get("lm_eval_tasks") or [])) or m.get("benchmark") is None:
            return True
    probes = m.get("probes") or {}
    if any(v is None for v in probes.values()):
        return True
    total = m.get("probes_total")
    return isinstance(total, int) and len(probes) < total


def _downsample(curve: list[list[float]], max_points: int = 400) -> list[list[float]]:
    if len(curve) <= max_points:
        return [[int(s), float(v)] for s, v in curve]
    stride = math.ceil(len(curve) / max_points)
    out = [[int(s), float(v)] for s, v in curve[::stride]]
    if out[-1][0] != curve[-1][0]:
        out.append([int(curve[-1][0]), float(curve[-1][1])])
    return out


def evaluate_class(
    mixer_cls: type,
    scale: str | Scale = "explore",
    seed: int = 0,
    on_log: Callable[[str], None] | None = None,
    baseline: dict | None = None,
    progress: ProgressFn | None = None,
    mixer_kwargs: dict | None = None,
    corpus_paths: Sequence[str | Path] | None = None,
    log_path: str | Path | None = None,
    num_threads: int | None = None,
    guards: Guards | dict | None = None,
    keep_model: Callable[[str, torch.nn.Module], None] | None = None,
    lm_eval: str = "here",
    lm_eval_allow_hub: bool = False,
    checkpoint: CheckpointFn | None = None,
) -> dict:
    """Evaluate ``mixer_cls`` at ``scale`` with ``seed``; returns the contract's metrics dict.

    At a scale with ``lm_eval_tasks`` the trained language model is then scored on those tasks
    (:func:`training.lm_eval_bridge.score_tasks`): ``lm_eval`` holds each task's score, stderr
    and the harness version, and ``benchmark`` (the benchmark term of fitness) is their mean.
    ``lm_eval="here"`` runs them in this process; ``"deferred"`` leaves them to the sandbox
    harness, which computes them from the trained model's logits (the worker never reports a
    task score). ``lm_eval_allow_hub`` permits lm-eval's own (hub, network) tasks.

    Probes run first (each on a fresh model), then the LM run when the scale has one; each runs
    its fixed number of steps, however long that takes. ``guards`` (a :class:`Guards` or its
    dict; default: derived from ``baseline``, the seed's metrics at this scale, with the default
    factors) can end the evaluation early with status ``too_slow`` (CPU seconds) or ``hung``
    (wall seconds); the metrics reached so far are kept and marked ``partial``. A non-finite loss,
    divergence or a suspected leak (against ``baseline['loss_curve']``) end it with
    ``status='stopped'`` and ``stop_reason``; a mixer that cannot be built or run gives
    ``status='error'`` and ``error``. ``probe_mean`` is the mean over the whole probe suite and
    None unless every probe was measured (``probe_mean_partial`` is the mean over those that
    were). ``num_threads`` sets torch's intra-op threads (default: ``ASIARCH_TORCH_THREADS`` or
    torch's own). ``keep_model(label, model)`` is given each trained model (a probe's label, or
    ``"lm"``) once it is measured (the sandbox worker keeps them for the harness to verify).

    At the LM run's half-way checkpoint (:func:`training.early_stop.checkpoint_step`) the model's
    checkpoint loss on fixed training-split windows is recorded in ``checkpoint`` (``{step, loss,
    batches, split, computed_by}``), and ``checkpoint(step, model)`` is asked, when given: a
    reason it returns ends the run there with status ``stopped_early`` (probes and the loss curve
    kept, no validation loss, partial). In the sandbox the harness answers it
    (``training.sandbox_child``).
    """
    scale = get_scale(scale)
    if guards is None:
        guards = Guards.relative_to(baseline, expected_s=scale.expected_seconds, scale_name=scale.name)
    elif isinstance(guards, dict):
        guards = Guards.from_dict(guards)
    with torch_threads(num_threads):
        return _evaluate_class(mixer_cls, scale, seed, on_log, baseline, progress, mixer_kwargs,
                               corpus_paths, log_path, guards, keep_model, lm_eval, lm_eval_allow_hub,
                               checkpoint)


class _GuardStop(Exception):
    """A guard ended the evaluation (status, reason)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _evaluate_class(mixer_cls, scale: Scale, seed, on_log, baseline, progress, mixer_kwargs, corpus_paths,
                    log_path, guards: Guards, keep_model=None, lm_eval: str = "here",
                    lm_eval_allow_hub: bool = False, checkpoint: CheckpointFn | None = None) -> dict:
    if lm_eval not in ("here", "deferred"):
        raise ValueError(f"lm_eval must be 'here' or 'deferred', got {lm_eval!r}")
    device = _device(scale)
    m = _empty_metrics(scale, seed)
    m["guards"] = guards.to_dict()
    m["device"] = device.type  # where the evaluation ran (cuda needs the GPU sandbox, Limits.gpu)
    m["load_avg_start"] = G.load_average()
    start = G.wall_clock()
    cpu_start = G.cpu_clock()
    log = on_log or (lambda line: None)
    weights = [p.steps * p.batch_size * p.seq_len * scale.probe_d_model for p in scale.probes]
    weights.append(scale.lm_steps * scale.batch_size * scale.seq_len * scale.d_model * scale.n_layers / 2)
    total_w = sum(weights) or 1.0
    work = {"done": 0.0, "stage": 0.0}  # finished stages' weight; the current stage's weight done

    def report(frac_of_stage: float, w: float, desc: str) -> None:
        work["stage"] = frac_of_stage * w
        if progress is not None:
            progress(min(1.0, (work["done"] + work["stage"]) / total_w), desc)

    def verdict(where: str) -> tuple[str, str] | None:
        cpu, wall = G.cpu_clock() - cpu_start, G.wall_clock() - start
        status = guards.check(cpu, wall)
        return None if status is None else (status, guards.reason(status, cpu, wall, where))

    def check_guards(where: str) -> None:
        v = verdict(where)
        if v is not None:
            raise _GuardStop(*v)

    def add_steps(res) -> None:
        m["steps_done"] += res.steps_done
        m["tokens_done"] += res.tokens

    accs: dict[str, float | None] = {}
    try:
        mixer = check_mixer_shape(mixer_cls, scale.d_model, scale.n_heads, mixer_kwargs)
        m["mixer_params"] = _count(mixer)
        del mixer
        # ---- probes
        for i, spec in enumerate(scale.probes):
            w = weights[i]
            check_guards(f"before the {spec.label} probe")
            seed_everything(seed * 1000 + i)
            model = _build_model(mixer_cls, spec.vocab_size, scale.probe_d_model, scale.probe_n_layers,
                                 scale.probe_n_heads, mixer_kwargs, device)
            cfg = TrainConfig(steps=spec.steps, lr=spec.lr, warmup_steps=max(1, spec.steps // 10),
                              log_every=max(1, spec.steps // 5), seed=seed)
            t0 = time.perf_counter()
            res = train(model, P.train_batches(spec, seed * 1000 + i), cfg, on_log=log, log_path=log_path,
                        label=spec.label, on_step=lambda s, _l, w=w, d=spec.label: report((s + 1) / spec.steps, w, d),
                        guard=lambda d=spec.label: verdict(f"in the {d} probe"))
            add_steps(res)
            if res.status != "ok":
                accs[spec.label] = None
                if res.status in GUARD_STATUSES:
                    raise _GuardStop(res.status, str(res.stop_reason))  # names the probe already
                m["status"], m["stop_reason"] = "stopped", f"{spec.label} probe: {res.stop_reason}"
                break
            x, y = P.generate(spec, spec.eval_examples, P.EVAL_SEED_OFFSET + seed * 1000 + i)
            acc = P.accuracy(model, x, y)
            accs[spec.label] = acc
            m["probe_seconds"][spec.label] = round(time.perf_counter() - t0, 2)
            log(f"[{spec.label}] accuracy {acc:.3f} ({time.perf_counter() - t0:.1f} s)")
            work["done"] += w
            work["stage"] = 0.0
            if keep_model is not None:
                keep_model(spec.label, model)
            del model
        # ---- language modelling
        if scale.has_lm and m["status"] == "ok":
            check_guards("before the language model")
            corpus = load_corpus(corpus_paths)
            seed_everything(seed)
            model = _build_model(mixer_cls, 256, scale.d_model, scale.n_layers, scale.n_heads, mixer_kwargs, device)
            m["params"] = _count(model)
            base_curve = None
            if baseline and baseline.get("scale") == scale.name and baseline.get("loss_curve") \
                    and baseline.get("status", "ok") == "ok":
                base_curve = baseline["loss_curve"]
            tolerance = tolerance_of(baseline)  # the loss rule, calibrated on the references
            m["leak_tolerance"] = tolerance
            m["leak_monitor"] = {"loss_rule": {
                "tolerance": tolerance, "against": "seed" if base_curve else None, "fired": False,
                "calibration": ((baseline or {}).get("leak_reference") or {}).get("loss") if baseline else None}}
            cfg = TrainConfig(steps=scale.lm_steps, lr=scale.lr, warmup_steps=scale.warmup_steps,
                              log_every=scale.log_every, seed=seed, leak_tolerance=tolerance)
            gen = torch.Generator().manual_seed(seed)
            w = weights[-1]
            cstep = checkpoint_step(scale.lm_steps)
            early: dict[str, tuple[str, str]] = {}

            def lm_step(s: int, _loss: float) -> None:
                report((s + 1) / scale.lm_steps, w, "language model")
                if cstep is not None and s + 1 == cstep:
                    why = _checkpoint(m, model, corpus, scale, cstep, checkpoint, log)
                    if why:
                        early["stop"] = (STOPPED_EARLY, why)

            res = train(model, batches(corpus.train, scale.batch_size, scale.seq_len, gen), cfg, on_log=log,
                        log_path=log_path, baseline_curve=base_curve, label="lm", on_step=lm_step,
                        guard=lambda: early.get("stop") or verdict("in the language model"))
            add_steps(res)
            m["train_loss"] = res.train_loss
            m["tokens_per_s"] = round(res.tokens_per_s, 1)
            m["train_seconds"] = round(res.seconds, 2)
            m["lm_tokens"] = res.tokens
            m["loss_curve"] = _downsample(res.loss_curve)
            if res.status in GUARD_STATUSES:
                raise _GuardStop(res.status, str(res.stop_reason))
            if res.leak_evidence is not None:
                m["leak_monitor"]["loss_rule"].update(fired=True, evidence=res.leak_evidence)
                if keep_model is not None:  # the harness checks the stopped model's causality
                    keep_model("lm", model)
            if res.status == STOPPED_EARLY:
                m["status"], m["stop_reason"] = STOPPED_EARLY, str(res.stop_reason)
            elif res.status != "ok":
                m["status"], m["stop_reason"] = "stopped", f"language model: {res.stop_reason}"
            else:
                val = validation_batches(corpus.val, scale.batch_size, scale.seq_len, scale.val_batches)
                vl = evaluate_loss(model, val)
                m["val_loss"] = vl if math.isfinite(vl) else None
                m["val_bpb"] = vl / LN2 if math.isfinite(vl) else None
                if not math.isfinite(vl):
                    m["status"], m["stop_reason"] = "stopped", "validation loss is not finite"
                log(f"[lm] validation loss {vl:.4f} nats/byte = {vl / LN2:.4f} bits/byte")
                if keep_model is not None:
                    keep_model("lm", model)
                if scale.benchmark == "lm_eval" and lm_eval == "here" and m["status"] == "ok":
                    check_guards("before the lm-eval tasks")
                    model.eval()
                    add_lm_eval(m, model, scale, seed, allow_hub=lm_eval_allow_hub, log=log)
            work["done"] += w
            work["stage"] = 0.0
        elif not scale.has_lm:
            m["params"] = None
        if m["status"] == "ok":
            report(1.0, 0.0, "done")
    except _GuardStop as stop:
        m["status"], m["stop_reason"] = stop.status, stop.reason
        log(f"[guard] {stop.reason}")
    except EvaluationError as exc:
        m["status"], m["error"] = "error", str(exc)
    except CorpusError as exc:
        m["status"], m["error"] = "error", str(exc)
    except LMEvalError as exc:
        m["status"], m["error"] = "error", f"lm-eval: {exc}"
    except Exception as exc:  # an error inside the candidate's code during training
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        m["status"], m["error"] = "error", f"training failed with {type(exc).__name__}: {exc}{where}"
    _finish_probes(m, accs, scale)
    m["wall_seconds"] = round(G.wall_clock() - start, 2)
    m["cpu_seconds"] = round(G.cpu_clock() - cpu_start, 2)  # all threads of this process; load-independent
    m["load_avg_end"] = G.load_average()
    fraction = 1.0 if m["status"] == "ok" else (work["done"] + work["stage"]) / total_w
    m["work_fraction"] = round(min(1.0, fraction), 4)
    m["throughput_vs_seed"] = guards.relative_throughput(fraction, m["cpu_seconds"])
    m["partial"] = is_partial(m, lm_eval_pending=lm_eval == "deferred")
    if m["partial"] and m["status"] == "ok":  # cannot happen by construction; never claim complete
        m["status"], m["stop_reason"] = "stopped", "incomplete evaluation"
    return m


def checkpoint_batches(corpus, scale: Scale) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed windows of the training split the half-way checkpoint loss is measured on
    (``scale.val_batches`` batches of ``scale.batch_size`` x ``scale.seq_len``, evenly spaced)."""
    return validation_batches(corpus.train, scale.batch_size, scale.seq_len, scale.val_batches)


def _checkpoint(m: dict, model: torch.nn.Module, corpus, scale: Scale, step: int,
                checkpoint: CheckpointFn | None, log: Callable[[str], None]) -> str | None:
    """Record the half-way checkpoint loss in ``m["checkpoint"]`` and ask ``checkpoint``; returns
    its reason to stop (or None)."""
    loss = evaluate_loss(model, checkpoint_batches(corpus, scale))
    m["checkpoint"] = {"step": step, "loss": round(loss, 6) if math.isfinite(loss) else None,
                       "batches": scale.val_batches, "split": "train", "computed_by": "evaluator"}
    log(f"[lm] checkpoint at step {step}/{scale.lm_steps}: loss {loss:.4f} nats/byte on "
        f"{scale.val_batches} fixed training batches")
    if checkpoint is None:
        return None
    why = checkpoint(step, model)
    torch.nn.Module.train(model, True)  # the harness's logits requests ran it in eval mode
    return str(why) if why else None


def add_lm_eval(m: dict, model: Callable[[torch.Tensor], torch.Tensor], scale: Scale, seed: int,
                allow_hub: bool = False, log: Callable[[str], None] | None = None) -> None:
    """Score ``model`` (the trained LM, or the harness's channel to it) on the scale's lm-eval
    tasks and write ``m["lm_eval"]`` and ``m["benchmark"]`` (the mean task score). Raises
    :class:`training.lm_eval_bridge.LMEvalError`."""
    from training.lm_eval_bridge import score_tasks

    device = None
    if isinstance(model, torch.nn.Module):
        params = list(model.parameters())
        device = params[0].device if params else None
    t0 = time.perf_counter()
    res = score_tasks(model, scale.lm_eval_tasks, metrics=dict(scale.lm_eval_metrics), limit=scale.lm_eval_limit,
                      max_length=scale.lm_eval_max_length or scale.seq_len, batch_size=scale.batch_size,
                      allow_hub=allow_hub, seed=seed, device=device)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    m["lm_eval"] = res
    m["benchmark"] = res["mean"]
    if log is not None:
        scores = ", ".join(f"{t} {v['metric']} {v['score']:.3f}" for t, v in res["tasks"].items())
        log(f"[lm-eval] {scores}; mean {res['mean']:.4f} ({res['harness']}, {res['seconds']:.1f} s)")


def _finish_probes(m: dict, accs: dict[str, float | None], scale: Scale) -> None:
    """Fill ``probes`` (every probe of the suite: its accuracy or None), ``probes_done``,
    ``probe_mean`` (the whole suite only) and ``probe_mean_partial`` (over those measured)."""
    m["probes"] = {spec.label: accs.get(spec.label) for spec in scale.probes}
    measured = [a for a in m["probes"].values() if a is not None]
    m["probes_done"] = len(measured)
    m["probes_total"] = len(scale.probes)
    m["probe_mean_partial"] = sum(measured) / len(measured) if measured else None
    complete = bool(scale.probes) and len(measured) == len(scale.probes)
    m["probe_mean"] = m["probe_mean_partial"] if complete else None


def evaluate_file(
    path: str | Path,
    scale: str | Scale = "explore",
    seed: int = 0,
    on_log: Callable[[str], None] | None = None,
    baseline: dict | None = None,
    progress: ProgressFn | None = None,
    **kwargs,
) -> dict:
    """Load the ``Mixer`` class of a file (in-process, trusted code) and :func:`evaluate_class` it.

    A file that cannot be loaded gives ``status='error'`` with the loader's one-paragraph message
    in ``error``. Extra keyword arguments (``mixer_kwargs``, ``corpus_paths``, ``log_path``) are
    passed on."""
    from training.loader import MixerLoadError, load_mixer_class

    scale = get_scale(scale)
    try:
        mixer_cls = load_mixer_class(Path(path))
    except MixerLoadError as exc:
        m = _empty_metrics(scale, seed)
        m["status"], m["error"], m["partial"] = "error", str(exc), True
        return m
    return evaluate_class(mixer_cls, scale, seed, on_log=on_log, baseline=baseline, progress=progress, **kwargs)


# ---------------------------------------------------------------------------------------------
# Reference baselines: several mixers x seeds, aggregated and ranked.


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def aggregate_runs(name: str, runs: list[dict]) -> dict:
    """Mean (and sample std) over seeds of one mixer's metrics dicts.

    Returns ``{name, seeds, status, probe_mean, probe_mean_std, probes: {probe: mean}, val_bpb,
    val_bpb_std, val_loss, tokens_per_s, wall_seconds, cpu_seconds, partial, runs}``; ``status``
    is ``ok`` only if every run is, and ``partial`` is true when any run is."""
    probe_names: list[str] = []
    for r in runs:
        for k in (r.get("probes") or {}):
            if k not in probe_names:
                probe_names.append(k)
    pm, pm_sd = _mean_std([r.get("probe_mean") for r in runs])
    bpb, bpb_sd = _mean_std([r.get("val_bpb") for r in runs])
    bad = [r for r in runs if r.get("status") != "ok"]
    return {
        "name": name,
        "seeds": [r.get("seed") for r in runs],
        "status": "ok" if not bad else bad[0].get("status"),
        "problem": (bad[0].get("error") or bad[0].get("stop_reason")) if bad else None,
        "probe_mean": pm,
        "probe_mean_std": pm_sd,
        "probes": {k: _mean_std([(r.get("probes") or {}).get(k) for r in runs])[0] for k in probe_names},
        "val_bpb": bpb,
        "val_bpb_std": bpb_sd,
        "val_loss": _mean_std([r.get("val_loss") for r in runs])[0],
        "tokens_per_s": _mean_std([r.get("tokens_per_s") for r in runs])[0],
        "wall_seconds": _mean_std([r.get("wall_seconds") for r in runs])[0],
        "cpu_seconds": _mean_std([r.get("cpu_seconds") for r in runs])[0],
        "mixer_params": runs[0].get("mixer_params") if runs else None,
        "partial": any(is_partial(r) for r in runs) or not runs,
        "runs": runs,
    }


def rank_key(summary: dict) -> tuple:
    """Sort key of an aggregated result: lower validation bpb first when measured, else higher
    probe mean; failed mixers last."""
    failed = summary.get("status") != "ok"
    bpb = summary.get("val_bpb")
    pm = summary.get("probe_mean")
    return (failed, bpb if bpb is not None else math.inf, -(pm if pm is not None else -1.0))


def evaluate_references(
    scale: str | Scale = "probe",
    seeds: Sequence[int] = (0,),
    names: Sequence[str] | None = None,
    on_result: Callable[[str, int, dict], None] | None = None,
    progress: Callable[[float, str], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    num_threads: int | None = None,
) -> list[dict]:
    """Evaluate reference mixers (default: all six) over ``seeds``; returns aggregated results
    (see :func:`aggregate_runs`) ranked by :func:`rank_key`. ``progress(fraction, description)``
    covers the whole batch of runs; ``on_result(name, seed, metrics)`` follows each run."""
    from training.mixers import REFERENCE_MIXERS, reference_mixer_class

    scale = get_scale(scale)
    names = list(names or REFERENCE_MIXERS)
    jobs = [(n, s) for n in names for s in seeds]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for j, (name, seed) in enumerate(jobs):
        def sub(frac: float, desc: str, j=j, name=name, seed=seed) -> None:
            if progress is not None:
                progress((j + frac) / len(jobs), f"{name} seed {seed}: {desc}")

        result = evaluate_class(reference_mixer_class(name), scale, seed, on_log=on_log, progress=sub,
                                num_threads=num_threads)
        runs[name].append(result)
        if on_result is not None:
            on_result(name, seed, result)
    return sorted((aggregate_runs(n, runs[n]) for n in names), key=rank_key)
