"""Bridge between asiarch's byte-level language models and EleutherAI's lm-evaluation-harness.

:class:`ByteLM` wraps any causal byte-level model (a callable mapping ``[B, L]`` int64 byte ids
to ``[B, L, V]`` logits, e.g. :class:`training.backbone.LanguageModel`) as an
``lm_eval.api.model.LM`` (lm-eval 0.4.x), so that lm-eval tasks can score it:

- ``loglikelihood``: sum of the byte log-probabilities of a continuation given its context, and
  whether greedy decoding would have produced exactly that continuation;
- ``loglikelihood_rolling``: the log-likelihood of a whole text, scored in windows of at most
  ``max_length`` bytes (every byte predicted once; optionally with overlapping windows);
- ``generate_until``: greedy byte-by-byte generation until a stop string or a byte budget.

Tokens are UTF-8 bytes, so a text's "tokens" are exactly ``text.encode("utf-8")``. A model has
no BOS token: an empty context is replaced by ``prefix_byte`` (default ``"\\n"``, the byte that
separates documents in :mod:`training.data`). Contexts longer than ``max_length`` are truncated
from the left. Requests are grouped into batches of ``batch_size`` sequences of similar length,
right-padded (safe for causal models: a pad byte never influences an earlier position).

:func:`run_lm_eval` runs the tasks shipped in ``training/lm_tasks`` through
``lm_eval.simple_evaluate`` fully offline and returns ``{task: {metric: value}}``. Their data is
generated deterministically (see :mod:`training.lm_tasks.generate`): LAMBADA-style last words,
a sentence cloze and bits per byte on the held-out Shakespeare documents, and the synthetic
probes of :mod:`training.probes` asked zero-shot, one token per byte.

Hub tasks (where a network exists). lm-eval's built-in tasks download their data from the
Hugging Face hub, so they only work on a machine with network access; asiarch never uses them
on its own. To run one, include lm-eval's default task folder and name the task::

    from training.lm_eval_bridge import ByteLM, run_lm_eval
    metrics = run_lm_eval(model, tasks=("lambada_openai", "hellaswag", "shakespeare_cloze"),
                          max_length=1024)

A task name that is not shipped turns on lm-eval's default task folder (``include_defaults``)
and leaves ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` alone (``offline``), so the hub data can
be downloaded; both can also be given explicitly. Offline mode only takes effect if decided
before ``datasets`` is first imported in the process (set the two variables to 0 in the
environment to be sure). Shipped and hub tasks can be mixed in one call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lm_eval.api.model import LM

if TYPE_CHECKING:  # pragma: no cover - typing only
    from lm_eval.api.instance import Instance

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "lm_tasks"
"""Folder of the task YAMLs (and their generated jsonl data) shipped with asiarch."""

SHAKESPEARE_TASKS: tuple[str, ...] = ("shakespeare_lastword", "shakespeare_cloze", "shakespeare_bpb")
"""Shipped tasks on the held-out Shakespeare text (tag ``asiarch``)."""
PROBE_TASKS: tuple[str, ...] = (
    "probe_mqar",
    "probe_noisy_recall",
    "probe_fuzzy_recall",
    "probe_selective_copy",
    "probe_compression",
)
"""Shipped zero-shot renderings of the synthetic probes (tag ``asiarch_probes``)."""
DEFAULT_TASKS: tuple[str, ...] = SHAKESPEARE_TASKS + PROBE_TASKS
"""The shipped tasks, run by :func:`run_lm_eval` by default."""

DEFAULT_PREFIX_BYTE = 10  # "\n": documents are joined by blank lines in training.data


@dataclass
class _Window:
    """One forward pass worth of scoring: ``targets`` are predicted by the last
    ``len(targets)`` positions of ``inputs``."""

    request: int
    inputs: list[int]
    targets: list[int]


def _score_windows(full: list[int], n_context: int, max_length: int, stride: int, request: int) -> list[_Window]:
    """Split the prediction of ``full[n_context:]`` (each byte conditioned on what precedes it)
    into windows whose inputs have at most ``max_length`` bytes.

    Targets are cut into consecutive pieces of at most ``stride`` bytes; the piece ``full[a:b]``
    is predicted from the input ``full[max(0, b - 1 - max_length) : b - 1]`` (as much left
    context as fits), so every byte is scored exactly once.
    """
    if n_context < 1:
        raise ValueError("at least one context byte is needed (use the prefix byte)")
    windows = []
    a = n_context
    while a < len(full):
        b = min(len(full), a + stride)
        start = max(0, b - 1 - max_length)
        windows.append(_Window(request, full[start : b - 1], full[a:b]))
        a = b
    return windows


def _forward_logprobs(model: Callable[[torch.Tensor], Any], ids: torch.Tensor) -> torch.Tensor:
    """Run the model and return float32 log-probabilities over the 256 byte values ``[B, L, 256]``
    (a wider vocabulary is renormalised over its first 256 ids: only bytes can be text)."""
    out = model(ids)
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif isinstance(out, dict):
        out = out["logits"]
    if out.dim() != 3 or out.shape[:2] != ids.shape or out.shape[-1] < 256:
        raise ValueError(
            f"the model returned logits of shape {tuple(out.shape)} for input {tuple(ids.shape)}; "
            "a byte-level model must return [batch, length, vocab >= 256]"
        )
    return torch.log_softmax(out[..., :256].float(), dim=-1)


class ByteLM(LM):
    """An lm-eval ``LM`` over a causal byte-level model.

    Args:
        model: a module (or callable) mapping int64 byte ids ``[B, L]`` to logits ``[B, L, V]``
            with ``V >= 256`` (ids above 255 are ignored). Run in eval mode (its previous mode is
            restored after each call); never trained or modified.
        max_length: longest input the model sees; longer contexts are truncated from the left and
            long texts are scored in windows. ``None`` uses ``model.max_length`` or
            ``model.seq_len`` when present, else 1024.
        batch_size: sequences per forward pass.
        max_gen_toks: default byte budget of ``generate_until`` (a task's ``max_gen_toks`` wins).
        prefix_byte: the byte standing in for an empty context (no BOS in a byte model).
        rolling_stride: bytes newly scored per window in ``loglikelihood_rolling``; ``None``
            means ``max_length`` (disjoint windows, lm-eval's convention). A smaller stride gives
            every byte at least ``max_length - rolling_stride`` bytes of context at a higher cost.
        pad_multiple: pad batches to a multiple of this length (e.g. a chunked mixer's chunk
            size); right padding never changes the scores of a causal model.
        device: where to run; ``None`` uses the device of the model's parameters.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], Any],
        max_length: int | None = None,
        batch_size: int = 16,
        max_gen_toks: int = 256,
        prefix_byte: int = DEFAULT_PREFIX_BYTE,
        rolling_stride: int | None = None,
        pad_multiple: int = 1,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if max_length is None:
            max_length = int(getattr(model, "max_length", None) or getattr(model, "seq_len", None) or 1024)
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= prefix_byte < 256:
            raise ValueError(f"prefix_byte must be a byte value, got {prefix_byte}")
        stride = max_length if rolling_stride is None else int(rolling_stride)
        if not 1 <= stride <= max_length:
            raise ValueError(f"rolling_stride must be in [1, max_length={max_length}], got {rolling_stride}")
        self.model = model
        self._max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.prefix_byte = int(prefix_byte)
        self.rolling_stride = stride
        self.pad_multiple = max(1, int(pad_multiple))
        if device is None:
            params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
            device = params[0].device if params else torch.device("cpu")
        self._device = torch.device(device)

    # ------------------------------------------------------------------ properties
    @property
    def max_length(self) -> int:
        """Longest input (in bytes) fed to the model."""
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        """Name of the 'tokenizer' (UTF-8 bytes), used by lm-eval to fingerprint caches."""
        return "utf8-bytes"

    def get_model_info(self) -> dict[str, Any]:
        """Model facts added by ``simple_evaluate`` to its results' ``config``."""
        info: dict[str, Any] = {"model_class": type(self.model).__name__, "max_length": self.max_length}
        if isinstance(self.model, torch.nn.Module):
            info["model_num_parameters"] = sum(p.numel() for p in self.model.parameters())
        return info

    # ------------------------------------------------------------------ encoding
    @staticmethod
    def tok_encode(text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as a list of ints (the model's tokens)."""
        return list(text.encode("utf-8"))

    @staticmethod
    def tok_decode(tokens: Iterable[int]) -> str:
        """Text of a byte sequence (invalid UTF-8 becomes U+FFFD)."""
        return bytes(tokens).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ scoring engine
    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode (no dropout) for the duration, then the module's previous mode."""
        module = self.model if isinstance(self.model, torch.nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            yield
        finally:
            if module is not None:
                module.train(was_training)

    def _pad_length(self, n: int) -> int:
        m = self.pad_multiple
        return -(-n // m) * m

    @torch.inference_mode()
    def _run_windows(self, windows: list[_Window], n_requests: int) -> list[tuple[float, bool]]:
        """Score all windows in length-sorted batches; sum per request (log-prob, all-greedy)."""
        totals = [0.0] * n_requests
        greedy = [True] * n_requests
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i].inputs))
        for start in range(0, len(order), self.batch_size):
            batch = [windows[i] for i in order[start : start + self.batch_size]]
            width = self._pad_length(max(len(w.inputs) for w in batch))
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for row, w in enumerate(batch):
                ids[row, : len(w.inputs)] = torch.tensor(w.inputs, dtype=torch.long)
            logprobs = _forward_logprobs(self.model, ids.to(self._device))
            for row, w in enumerate(batch):
                n_in, n_t = len(w.inputs), len(w.targets)
                lp = logprobs[row, n_in - n_t : n_in]
                targets = torch.tensor(w.targets, dtype=torch.long, device=lp.device)
                totals[w.request] += float(lp.gather(-1, targets[:, None]).sum())
                if greedy[w.request]:
                    greedy[w.request] = bool((lp.argmax(-1) == targets).all())
        return list(zip(totals, greedy))

    def score_bytes(self, pairs: Sequence[tuple[bytes, bytes]], stride: int | None = None) -> list[tuple[float, bool]]:
        """Log-probability (natural log) of each continuation given its context, and whether every
        continuation byte is the model's argmax. Contexts are truncated from the left to fit
        ``max_length``; an empty context becomes ``prefix_byte``; continuations longer than the
        window are scored in consecutive windows of ``stride`` bytes (default ``max_length``)."""
        stride = self.max_length if stride is None else stride
        windows: list[_Window] = []
        for i, (context, continuation) in enumerate(pairs):
            ctx = list(context) if context else [self.prefix_byte]
            windows.extend(_score_windows(ctx + list(continuation), len(ctx), self.max_length, stride, i))
        with self._eval_mode():
            return self._run_windows(windows, len(pairs))

    # ------------------------------------------------------------------ LM API
    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log P(continuation | context), is_greedy)`` for each ``Instance.args ==
        (context, continuation)``; an empty continuation scores ``(0.0, True)``."""
        pairs = [(ctx.encode("utf-8"), cont.encode("utf-8")) for ctx, cont in (r.args for r in requests)]
        results = self.score_bytes(pairs)
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text (``Instance.args == (text,)``), the first byte
        conditioned on ``prefix_byte``, scored in windows of ``max_length`` bytes moving by
        ``rolling_stride``."""
        pairs = [(b"", r.args[0].encode("utf-8")) for r in requests]
        results = [ll for ll, _ in self.score_bytes(pairs, stride=self.rolling_stride)]
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy generation for each ``Instance.args == (context, gen_kwargs)``.

        ``gen_kwargs`` may hold ``until`` (a string or list of stop strings; the returned text
        stops before the first one), ``max_gen_toks`` (byte budget; default ``max_gen_toks``)
        and sampling options, which are ignored with a warning (decoding is always greedy).
        The model sees the last ``max_length`` bytes of context plus generated text.
        """
        jobs = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            budget = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0:
                log.warning("ByteLM decodes greedily; ignoring sampling options %s", kwargs)
            stops = [s.encode("utf-8") for s in until if s]
            jobs.append((list(context.encode("utf-8")) or [self.prefix_byte], stops, budget))
        outputs: list[str] = [""] * len(jobs)
        order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][0]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            with self._eval_mode():
                generated = self._greedy_batch([jobs[i] for i in idx])
            for i, text in zip(idx, generated):
                outputs[i] = text
        for req, out in zip(requests, outputs):
            self.cache_hook.add_partial("generate_until", req.args, out)
        return outputs

    @torch.inference_mode()
    def _greedy_batch(self, jobs: list[tuple[list[int], list[bytes], int]]) -> list[str]:
        """Greedy decoding of a batch (no recurrent state API: each step re-reads the window)."""
        seqs = [list(ctx) for ctx, _, _ in jobs]
        gen: list[bytearray] = [bytearray() for _ in jobs]
        cut: list[int | None] = [None] * len(jobs)
        active = [i for i, (_, _, budget) in enumerate(jobs) if budget > 0]
        while active:
            windows = [seqs[i][-self.max_length :] for i in active]
            width = self._pad_length(max(len(w) for w in windows))
            ids = torch.zeros(len(active), width, dtype=torch.long)
            for row, w in enumerate(windows):
                ids[row, : len(w)] = torch.tensor(w, dtype=torch.long)
            logprobs = _forward_logprobs(self.model, ids.to(self._device))
            last = torch.tensor([len(w) - 1 for w in windows], device=logprobs.device)
            nxt = logprobs[torch.arange(len(active), device=logprobs.device), last].argmax(-1).tolist()
            still = []
            for i, byte in zip(active, nxt):
                seqs[i].append(byte)
                gen[i].append(byte)
                hit = next((s for s in jobs[i][1] if gen[i].endswith(s)), None)
                if hit is not None:
                    cut[i] = len(gen[i]) - len(hit)
                elif len(gen[i]) < jobs[i][2]:
                    still.append(i)
            active = still
        return [self.tok_decode(g if c is None else g[:c]) for g, c in zip(gen, cut)]


# ---------------------------------------------------------------------- running tasks
def task_manager(include_path: str | Path | Sequence[str | Path] | None = None, include_defaults: bool = False):
    """An ``lm_eval.tasks.TaskManager`` indexing the shipped tasks (``TASKS_DIR``) plus
    ``include_path``; ``include_defaults=True`` adds lm-eval's built-in (hub) tasks."""
    from lm_eval.tasks import TaskManager

    paths: list[str | Path] = [TASKS_DIR]
    if include_path is not None:
        paths += list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    return TaskManager(include_path=[str(p) for p in paths], include_defaults=include_defaults)


def needs_hub(tasks: Iterable[str], include_path: str | Path | Sequence[str | Path] | None = None) -> bool:
    """Whether any of ``tasks`` is neither shipped nor under ``include_path`` (so it can only
    be one of lm-eval's own tasks, whose data comes from the Hugging Face hub)."""
    local = set(task_manager(include_path, include_defaults=False).all_tasks)
    return any(t not in local for t in tasks)


def _flatten_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}`` -> ``{"acc": 0.5}``."""
    out: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        metrics: dict[str, float] = {}
        for key, value in values.items():
            if key == "alias" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, _, filt = key.partition(",")
            name = name if filt in ("", "none") else f"{name},{filt}"
            metrics[name] = float(value)
        out[task] = metrics
    return out


def run_lm_eval(
    model: Any,
    tasks: Sequence[str] = DEFAULT_TASKS,
    limit: int | float | None = None,
    *,
    max_length: int | None = None,
    batch_size: int = 16,
    num_fewshot: int | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    include_defaults: bool | None = None,
    offline: bool | None = None,
    bootstrap_iters: int = 0,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, dict[str, float]]:
    """Evaluate ``model`` on lm-eval tasks and return ``{task: {metric: value}}``.

    ``model`` is a :class:`ByteLM` (or any ``lm_eval`` ``LM``), or a byte-level torch model
    that is wrapped in a :class:`ByteLM` with ``max_length`` and ``batch_size``. ``tasks`` are
    names known to the task manager: the shipped tasks (default: all of ``DEFAULT_TASKS``; the
    tags ``asiarch`` and ``asiarch_probes`` name groups of them), tasks under ``include_path``,
    or lm-eval's hub tasks (need network, see the module docstring). ``include_defaults`` and
    ``offline`` default to whether any task is neither shipped nor under ``include_path``.
    ``limit`` caps the documents per task (a fraction if < 1).

    Every task in the results (a tag expands to its tasks) maps to its metrics: lm-eval's
    ``,none`` filter suffix is dropped, ``sample_len`` is the number of documents scored, and
    standard errors (``<metric>_stderr``) are only computed with ``bootstrap_iters > 0``.
    Offline, ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set to 1 when not already set;
    the shipped tasks read their local jsonl files and never use the network. Note that
    ``lm_eval.simple_evaluate`` seeds Python's, NumPy's and torch's global RNGs (with ``seed``).
    lm-eval's log messages below ERROR are silenced unless ``verbose``. Raises ``ValueError``
    naming unknown tasks.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks given")
    if include_defaults is None or offline is None:
        hub = needs_hub(tasks, include_path)
        include_defaults = hub if include_defaults is None else include_defaults
        offline = not hub if offline is None else offline
    if offline:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval

    manager = task_manager(include_path, include_defaults=include_defaults)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"Unknown lm-eval task(s): {', '.join(unknown)}. Shipped tasks: {', '.join(DEFAULT_TASKS)}"
            + ("" if include_defaults else "; lm-eval's own (hub) tasks need include_defaults=True and a network")
            + "."
        )
    lm = model if isinstance(model, LM) else ByteLM(model, max_length=max_length, batch_size=batch_size)
    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    if not verbose:
        lm_logger.setLevel(logging.ERROR)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        lm_logger.setLevel(level)
    if results is None:  # only on non-zero ranks of a distributed run
        return {}
    return _flatten_metrics(results["results"])


# ---------------------------------------------------------------------- scoring a scale's tasks
class LMEvalError(RuntimeError):
    """The lm-eval tasks of a scale cannot be run (unknown task, hub task without a network,
    a failure inside lm-eval); one-paragraph message."""


def harness_version() -> str:
    """``"lm-eval <version>"`` of the installed lm-evaluation-harness."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"lm-eval {version('lm_eval')}"
    except PackageNotFoundError:  # pragma: no cover - lm_eval is a dependency
        return "lm-eval (unknown version)"


def hub_tasks(tasks: Iterable[str]) -> list[str]:
    """The names among ``tasks`` that are not shipped (lm-eval's own tasks: hub data)."""
    local = set(task_manager(None, include_defaults=False).all_tasks)
    return [t for t in tasks if t not in local]


def score_tasks(
    model: Any,
    tasks: Sequence[str],
    *,
    metrics: dict[str, str] | None = None,
    limit: int | None = None,
    max_length: int = 1024,
    batch_size: int = 16,
    allow_hub: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Run ``tasks`` on ``model`` (a byte-level callable ``[B, L] -> [B, L, V]``, e.g. the harness's
    channel to a sandboxed trained model) and return the record stored in metrics.json::

        {"harness": "lm-eval 0.4.13", "tasks": {task: {"metric", "score", "stderr", "n"}},
         "mean": mean task score, "limit": limit, "max_length": max_length, "hub": [...]}

    A task's score is its ``metrics[task]`` metric (default ``acc``), its stderr lm-eval's
    standard error of that metric. Shipped tasks run offline (no network is tried). A task that is
    not shipped is one of lm-eval's hub tasks: refused with :class:`LMEvalError` unless
    ``allow_hub`` (then its data is downloaded; a failure says that a network is needed)."""
    tasks = list(tasks)
    if not tasks:
        raise LMEvalError("no lm-eval tasks given")
    hub = hub_tasks(tasks)
    if hub and not allow_hub:
        raise LMEvalError(
            f"lm-eval task(s) {', '.join(hub)} are not shipped with asiarch: they are lm-eval's own tasks, whose "
            f"data comes from the Hugging Face hub and needs a network. Shipped tasks: {', '.join(DEFAULT_TASKS)}. "
            "Hub tasks run only when asked for by name (--lm-eval-tasks) outside the network-less sandbox "
            "(--unsafe-no-sandbox) on a machine with a network.")
    metrics = dict(metrics or {})
    try:
        raw = run_lm_eval(ByteLM(model, max_length=max_length, batch_size=batch_size, device=device), tasks,
                          limit=limit, include_defaults=bool(hub), offline=not hub, bootstrap_iters=100, seed=seed)
    except ValueError as exc:
        raise LMEvalError(str(exc)) from exc
    except (OSError, ConnectionError) as exc:
        if hub:
            raise LMEvalError(f"the hub task(s) {', '.join(hub)} could not be loaded (a network is needed): "
                              f"{type(exc).__name__}: {exc}") from exc
        raise
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        values = raw.get(task)
        metric = metrics.get(task, "acc")
        if not values or metric not in values:
            raise LMEvalError(f"lm-eval returned no {metric!r} for task {task!r} (got {sorted(values or {})})")
        stderr = values.get(f"{metric}_stderr")
        out[task] = {"metric": metric, "score": float(values[metric]),
                     "stderr": float(stderr) if isinstance(stderr, float) and stderr == stderr else None,
                     "n": int(values.get("sample_len", 0))}
    mean = sum(v["score"] for v in out.values()) / len(out)
    return {"harness": harness_version(), "tasks": out, "mean": mean, "limit": limit, "max_length": max_length,
            "hub": hub}
