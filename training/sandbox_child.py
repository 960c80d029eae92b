"""The sandbox child: ``python -m training.sandbox_child --result-fd N [--request FILE]``.

Started only by :func:`training.sandbox.run_sandboxed`. It reads its request (JSON) from stdin or
``--request FILE``, then, in this order:

1. applies its resource limits (address space, CPU seconds: the worker's ``cpu_s`` plus
   :data:`HARNESS_CPU_S` for the harness, written-file size, no core files),
   ignores SIGXFSZ (an oversized write fails with an error instead of killing), enters the run
   folder;
2. pre-imports torch and every allowed module (so the guard never has to let candidate code load
   anything new) and the task's own code;
3. forks the worker (:mod:`training.worker`, through :class:`training.harness.WorkerClient`),
   which installs the runtime guard (:class:`training.sandbox_guard.Guard`): an audit hook that,
   while active, refuses sockets, subprocesses, exec/fork/spawn, signals to other processes,
   ctypes, unpickling, writes and deletions outside the run folder and reads outside the project,
   the Python installation and a few system folders; ``socket.socket`` and friends replaced by
   refusing stand-ins; restricted builtins for the candidate module (no
   open/eval/exec/compile/__import__/globals, an import allow-list, getattr/setattr refusing
   dunders and forbidden names); a watch that notices monkeypatching of torch, einops, math and
   training.ops;
4. the worker re-runs the static check (it never executes code that fails it, unless the trusted
   caller turned it off for a test), loads the candidate and runs the task's operations; this
   harness computes every verdict from what the worker returns;
5. writes JSON lines to the result fd: intermediate ``{"event": ...}`` messages and a final
   ``{"event": "result", "ok": ..., "reason": ..., ...}``.

Candidate output goes to stdout/stderr, which the parent captures and streams.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

# the walls and the guarded loader live in training.sandbox_guard (shared with the worker, which
# must not import this module); re-exported here under their historical names
from training.sandbox_guard import (  # noqa: F401
    CANDIDATE_MODULE, CandidateError, Guard, MutationWatch, SandboxViolation, default_watch, load_candidate,
)
from training.sandbox_guard import memory_message as _memory_message
from training.sandbox_guard import read_roots as _read_roots  # noqa: F401

GIB = 1024 ** 3


class ResultChannel:
    """JSON lines to the parent over the inherited pipe fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, msg: dict[str, Any]) -> None:
        """Write one message (one line)."""
        data = (json.dumps(msg, default=_json_default) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


def _json_default(o: Any) -> Any:
    try:
        import math

        f = float(o)
        return f if math.isfinite(f) else str(f)
    except (TypeError, ValueError):
        return str(o)


#: CPU seconds the harness may use beyond the worker's limit: its own interpreter start-up and
#: torch import (2-5 s, more on a loaded machine), the static check and the verdicts it computes.
#: ``cpu_s`` bounds the worker, which alone runs candidate code (it sets its own, lower, limit
#: after the fork: a forked process starts at zero CPU seconds).
HARNESS_CPU_S = 120


def apply_limits(limits: dict[str, Any]) -> None:
    """Set this process's rlimits (soft = hard where raising back must be impossible).

    The CPU limit here is the harness's: the worker's ``cpu_s`` plus :data:`HARNESS_CPU_S`."""
    as_bytes = int(float(limits["address_space_gib"]) * GIB)
    cpu = max(1, int(float(limits["cpu_s"]))) + HARNESS_CPU_S
    fsize = int(float(limits["file_size_mib"]) * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not limits.get("gpu"):  # a GPU sandbox: the parent bounds resident memory instead
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    # soft limit -> SIGXCPU (clear reason in the parent); hard limit a little later -> SIGKILL
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _preimport(task: str) -> None:
    """Import everything trusted code will need (torch and what it loads lazily, e.g. sympy and
    mpmath for symbolic shapes; einops; training.ops; the task's own modules) before the worker
    is forked, so that nothing is imported later from a place the candidate could have written."""
    import dataclasses  # noqa: F401
    import functools  # noqa: F401
    import math  # noqa: F401
    import socket  # noqa: F401
    import typing  # noqa: F401

    import torch
    import torch.nn  # noqa: F401
    import torch.nn.functional  # noqa: F401

    for name in ("sympy", "mpmath", "einops", "einops.layers.torch"):
        try:
            __import__(name)
        except ImportError:
            pass
    try:
        import training.ops  # noqa: F401
    except Exception as exc:  # reported when a candidate imports it
        print(f"[sandbox] training.ops is not importable: {exc}", file=sys.stderr, flush=True)
    import training.causal  # noqa: F401
    import training.checker  # noqa: F401
    import training.harness  # noqa: F401
    import training.sandbox_guard  # noqa: F401
    import training.scales  # noqa: F401
    import training.static_check  # noqa: F401
    import training.wire  # noqa: F401
    import training.worker  # noqa: F401
    if task == "evaluate":
        import training.evaluate  # noqa: F401
        import training.leak_monitor  # noqa: F401
    del torch


def run_task(request: dict[str, Any], channel: ResultChannel) -> dict[str, Any]:
    """The harness: dispatch the request to its task; returns the final result dict.

    ``check`` runs entirely in this trusted process, which forks the worker that alone loads the
    candidate (:func:`training.checker.run_dynamic_checks`); the verdict is computed here."""
    task = request["task"]
    payload = request["payload"]
    _preimport(task)

    def emit(msg: dict[str, Any]) -> None:
        channel.send(msg)

    if task == "check":
        from training.checker import run_dynamic_checks

        options = dict(payload.get("options") or {})
        options.setdefault("mem_reason", f"exceeded {float(request['limits']['address_space_gib']):g} GiB address space")
        options.setdefault("threads", request["limits"].get("threads", 1))
        return run_dynamic_checks({**request, "payload": {**payload, "options": options}}, emit)
    if task == "evaluate":
        return _evaluate_in_worker(request, emit)
    return {"ok": False, "reason": f"unknown task {task!r}"}


def _json_safe(o: Any, depth: int = 0) -> Any:
    """A copy of the worker's JSON with only plain values (bounded depth, string lengths)."""
    if depth > 8:
        return None
    if isinstance(o, bool) or o is None or isinstance(o, int):
        return o
    if isinstance(o, float):
        return o
    if isinstance(o, str):
        return o[:4000]
    if isinstance(o, list):
        return [_json_safe(v, depth + 1) for v in o[:5000]]
    if isinstance(o, dict):
        return {str(k)[:200]: _json_safe(v, depth + 1) for k, v in list(o.items())[:500]}
    return None


#: How far the harness's own probe accuracy / validation loss may differ from the worker's report.
METRIC_TOL = 1e-4
#: CPU seconds the worker spends outside the evaluator's own clock (warm-up, loading, verification)
CPU_SLACK_S = 15.0
#: how much earlier logits of a trained model may move when the harness changes later tokens
LOGIT_LEAK_TOL = 1e-4
#: the prefix of every reason a post-training causality violation gives (status ``rejected``)
NON_CAUSAL_AFTER_TRAINING = "non-causal (found after training)"


def _logits_fn(client: Any, label: str, info: dict[str, Any] | None = None) -> Callable[[Any], Any]:
    """The harness's channel to one trained model: ``tokens [B, L] -> logits [B, L, V]`` through the
    worker's ``logits`` op, which runs the model exactly as the scored forward does (eval mode,
    autograd off, the evaluation's device and autocast). ``info`` gets the worker's word on the
    device and dtype."""
    from training.harness import WorkerFailed

    def logits(x: Any) -> Any:
        vals, (y,) = client.call("logits", {"label": label}, [x], n_out=1)
        if y.dim() != 3 or tuple(y.shape[:2]) != tuple(x.shape):
            raise WorkerFailed("protocol", f"logits of shape {tuple(y.shape)} for tokens {tuple(x.shape)}")
        if info is not None and isinstance(vals.get("dtype"), str):
            info["dtype"] = str(vals["dtype"])[:40]
        return y

    return logits


def _verify_metrics(client: Any, payload: dict[str, Any], metrics: dict[str, Any],
                    kept: list[str]) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """Recompute, in the harness, what the worker reported: each probe's accuracy from the logits
    of the worker's trained probe model on held-out examples the harness generates (in batches of
    ``training.probes.EVAL_BATCH_SIZE``, as ``probes.accuracy`` scores them), and the validation
    loss from the trained language model's logits on the validation batches the harness reads
    (the scale's batch and length). Returns (problem or None, what was verified, the scored
    batches: ``{label: {"tokens", "logits", "vocab", "source"}}``, the first scored batch of every
    model measured, for :func:`_causality_after_training`)."""
    from training import probes as P
    from training.trainer import IGNORE, sequence_loss

    scale = payload_scale(payload)
    seed = int(payload.get("seed", 0))
    info: dict[str, Any] = {"probes": {}, "val_loss": None, "max_logit_leak": 0.0}
    scored: dict[str, Any] = {}
    reported = metrics.get("probes") if isinstance(metrics.get("probes"), dict) else {}
    bs = P.EVAL_BATCH_SIZE
    for i, spec in enumerate(scale.probes):
        acc_w = reported.get(spec.label)
        if spec.label not in kept or not isinstance(acc_w, (int, float)):
            continue
        logits = _logits_fn(client, spec.label)
        x, y = P.generate(spec, spec.eval_examples, P.EVAL_SEED_OFFSET + seed * 1000 + i)
        correct = total = 0
        for j in range(0, x.shape[0], bs):
            out = logits(x[j:j + bs])
            if j == 0:
                scored[spec.label] = {"tokens": x[:bs], "logits": out, "vocab": spec.vocab_size,
                                      "source": "held-out probe examples"}
            pred = out.argmax(dim=-1)
            yy = y[j:j + bs]
            mask = yy != IGNORE
            correct += int((pred[mask] == yy[mask]).sum())
            total += int(mask.sum())
        acc_h = correct / max(total, 1)
        info["probes"][spec.label] = acc_h
        if abs(acc_h - float(acc_w)) > METRIC_TOL:
            return (f"the worker reported {spec.label} accuracy {float(acc_w):.4f}; the harness measured "
                    f"{acc_h:.4f}"), info, scored
    vl_w = metrics.get("val_loss")
    if "lm" in kept and isinstance(vl_w, (int, float)):
        from training.data import load_corpus, validation_batches

        corpus = load_corpus((payload.get("kwargs") or {}).get("corpus_paths"))
        val = validation_batches(corpus.val, scale.batch_size, scale.seq_len, scale.val_batches)
        logits = _logits_fn(client, "lm")
        total, count = 0.0, 0
        for k, (x, y) in enumerate(val):
            out = logits(x)
            if k == 0:
                scored["lm"] = {"tokens": x, "logits": out, "vocab": 256, "source": "validation batch"}
            n = int((y != IGNORE).sum())
            total += float(sequence_loss(out, y)) * n
            count += n
        vl_h = total / max(count, 1)
        info["val_loss"] = vl_h
        if not abs(vl_h - float(vl_w)) <= METRIC_TOL * max(1.0, abs(vl_h)):
            return f"the worker reported validation loss {float(vl_w):.5f}; the harness measured {vl_h:.5f}", info, scored
    return None, info, scored


def _scored_batch(payload: dict[str, Any], label: str) -> dict[str, Any] | None:
    """The first scored batch of a trained model whose metrics were not verified (an evaluation
    stopped after training it): the probe's held-out examples at ``EVAL_BATCH_SIZE``, or the first
    validation batch of the language model."""
    from training import probes as P

    scale = payload_scale(payload)
    seed = int(payload.get("seed", 0))
    for i, spec in enumerate(scale.probes):
        if spec.label == label:
            x, _ = P.generate(spec, spec.eval_examples, P.EVAL_SEED_OFFSET + seed * 1000 + i)
            return {"tokens": x[:P.EVAL_BATCH_SIZE], "logits": None, "vocab": spec.vocab_size,
                    "source": "held-out probe examples"}
    if label == "lm" and scale.has_lm:
        from training.data import load_corpus, validation_batches

        corpus = load_corpus((payload.get("kwargs") or {}).get("corpus_paths"))
        val = validation_batches(corpus.val, scale.batch_size, scale.seq_len, 1)
        return {"tokens": val[0][0], "logits": None, "vocab": 256, "source": "validation batch"}
    return None


def _causality_after_training(client: Any, payload: dict[str, Any], kept: list[str],
                              scored: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Post-training causality, in every evaluation, on every trained model the worker kept: on the
    model's scored batch (real held-out probe inputs / a validation batch; the same batch size,
    length, mode (eval), autograd setting (off) and dtype as the scored forward, through the same
    ``logits`` op) the harness replaces the tokens from t on, for t at the first and last
    positions, one secret position and a few random ones
    (:func:`training.causal.after_training_positions`), and the logits before t must not move
    beyond ``LOGIT_LEAK_TOL``. Returns (the violation as ``"non-causal (found after training): ..."``
    or None, the record for ``metrics["causality_after_training"]``)."""
    import os
    import random

    import torch

    from training.causal import after_training_positions, check_trained

    secret = random.Random(int.from_bytes(os.urandom(8), "little"))
    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    gen = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    rec: dict[str, Any] = {"checked": False, "models": [], "positions": {}, "batch": {}, "length": {},
                           "source": {}, "mode": "eval", "grad": "off", "dtype": {}, "max_change": 0.0,
                           "tol": LOGIT_LEAK_TOL, "worst": None, "violation": None}
    violation = None
    failing: list[tuple[float, str, str]] = []
    for label in kept:
        batch = scored.get(label) or _scored_batch(payload, label)
        if batch is None:
            continue
        dev: dict[str, Any] = {}
        x = batch["tokens"]
        positions = after_training_positions(int(x.shape[1]), secret, rng)
        res = check_trained(_logits_fn(client, label, dev), x, int(batch["vocab"]), positions, gen,
                            base=batch.get("logits"), tol=LOGIT_LEAK_TOL)
        rec["models"].append(label)
        rec["positions"][label] = res["positions"]
        rec["batch"][label], rec["length"][label] = res["batch"], res["length"]
        rec["source"][label] = batch["source"]
        rec["dtype"][label] = dev.get("dtype", "float32")
        if res["max_change"] >= rec["max_change"] and res["worst"] is not None:
            rec["worst"] = {"model": label, **res["worst"]}
        rec["max_change"] = max(rec["max_change"], res["max_change"])
        if res["failing"]:
            bad = max(res["failing"], key=lambda f: f["change"])
            failing.append((bad["change"], label,
                            f"the trained {label} model ({batch['source']}, L={res['length']}, batch {res['batch']}, "
                            f"eval mode, grad off, {rec['dtype'][label]}): replacing tokens {bad['t']}.. moved the "
                            f"logits at position {bad['position']}, change {bad['change']:.3g} > {LOGIT_LEAK_TOL:g}"))
    rec["checked"] = bool(rec["models"])
    if not rec["checked"]:
        rec["reason"] = "no trained model to check (the evaluation stopped before one was measured)"
    rec["failing_models"] = [label for _, label, _ in sorted(failing, reverse=True)]
    if failing:
        worst = max(failing)
        more = f" (and {len(failing) - 1} more trained model(s))" if len(failing) > 1 else ""
        violation = f"{NON_CAUSAL_AFTER_TRAINING}: {worst[2]}{more}"
    rec["violation"] = violation
    return violation, rec


#: trained mixers the leak monitor's re-check runs the checker's causality check on, at most
RECHECK_MAX_MIXERS = 4


def _recheck_trained(client: Any, payload: dict[str, Any], label: str, why: str) -> tuple[str | None, dict]:
    """The checker's causality check (``training.causal.causality_check``: every scored
    configuration, train and eval mode, grad on and off, the parameters as trained and re-drawn)
    on each layer's mixer of the trained model ``label``; the trained state is restored after.
    Returns (the violation or None, ``{model, layers: [{layer, passed, value, reason}]}``)."""
    import os
    import random

    import torch

    from training.causal import causality_check, forward_fns, scale_config

    scale = payload_scale(payload)
    d = scale.d_model if label == "lm" else scale.probe_d_model
    cfg = scale_config(scale)
    secret = int.from_bytes(os.urandom(8), "little")
    gen = torch.Generator().manual_seed(secret)
    order = random.Random(secret)
    vals, _ = client.call("select_trained", {"label": label, "layer": 0}, n_out=0)
    n_layers = int(vals.get("n_layers") or 1) if isinstance(vals.get("n_layers"), int) else 1
    out: dict[str, Any] = {"model": label, "layers": []}
    for layer in range(min(n_layers, 16)):
        def select(layer: int = layer) -> Any:
            return client.call("select_trained", {"label": label, "layer": layer}, n_out=0)

        select()
        fwd, fwd_bwd = forward_fns(client)
        v = causality_check(client, cfg, {}, d, gen, order, rebuild=select, fwd=fwd, fwd_bwd=fwd_bwd,
                            params="as-trained")
        out["layers"].append({"layer": layer, "passed": v["passed"], "value": v["value"], "reason": v["reason"]})
        if not v["passed"]:
            return (f"{NON_CAUSAL_AFTER_TRAINING}: {why}; the checker's causality check on the trained {label} "
                    f"model's layer {layer} mixer: {v['reason']}"), out
    return None, out


def _leak_monitor(client: Any, payload: dict[str, Any], metrics: dict[str, Any], kept: list[str],
                  verified: dict[str, Any]) -> str | None:
    """The leak monitor (:mod:`training.leak_monitor`) in the harness, on what the harness itself
    measured, with the references the loop sent (``payload["baseline"]["leak_reference"]``):

    - probe rule: a probe accuracy above softmax attention's on the same probe by more than its
      seed spread flags the design; before the result goes back to be scored, the checker's
      causality check re-runs on the mixers of the flagged trained models (the most-exceeding
      first, ``RECHECK_MAX_MIXERS`` mixers at most);
    - loss rule (an LM scale): the tolerance the worker's trainer applied is the one the payload
      implies (the harness writes it), and a run the rule stopped gets the same re-check on its
      language model's mixers.

    Writes ``metrics["leak_monitor"]`` ({fired, probe_rule: {checked, reference, fired, flags,
    recheck}, loss_rule: {tolerance, fired, evidence, calibration, recheck}}) and returns a
    violation (``"non-causal (found after training): ..."``) or None."""
    from training.leak_monitor import probe_flags, tolerance_of

    baseline = payload.get("baseline") if isinstance(payload.get("baseline"), dict) else {}
    reference = baseline.get("leak_reference") if isinstance(baseline.get("leak_reference"), dict) else {}
    worker_rec = metrics.get("leak_monitor") if isinstance(metrics.get("leak_monitor"), dict) else {}
    rec: dict[str, Any] = {"fired": False}
    scale = payload_scale(payload)
    if scale.has_lm:
        loss = dict(worker_rec.get("loss_rule") or {}) if isinstance(worker_rec.get("loss_rule"), dict) else {}
        loss["tolerance"] = tolerance_of(baseline)  # the payload's word, not the worker's
        metrics["leak_tolerance"] = loss["tolerance"]  # the fitness's leak rule uses the same
        loss["calibration"] = reference.get("loss")
        loss["fired"] = bool(loss.get("fired"))
        rec["loss_rule"] = loss
    probe_ref = reference.get("probe") if isinstance(reference.get("probe"), dict) else None
    if not scale.probes:
        rec["probe_rule"] = {"checked": False, "reason": "the scale has no probes"}
    elif probe_ref is None:
        rec["probe_rule"] = {"checked": False, "reason": "no softmax_attention baseline measured at this scale yet"}
    else:
        flags = probe_flags(dict(verified.get("probes") or {}), probe_ref)
        rec["probe_rule"] = {"checked": True, "reference": probe_ref.get("name"), "fired": bool(flags),
                             "flags": flags, "recheck": None}
    todo: list[tuple[str, str, dict]] = []
    for f in (rec["probe_rule"].get("flags") or []):
        if f["probe"] in kept:
            todo.append((f["probe"], f"the leak monitor flagged {f['probe']} (accuracy {f['accuracy']:.3f} > "
                                     f"{f['reference']}'s {f['reference_mean']:.3f} + spread {f['margin']:.3f})",
                         rec["probe_rule"]))
    loss = rec.get("loss_rule") or {}
    if loss.get("fired") and "lm" in kept:
        ev = loss.get("evidence") or {}
        todo.append(("lm", f"the leak monitor's loss rule fired (smoothed loss {ev.get('smoothed_loss')} more than "
                           f"{loss['tolerance']:.0%} below the seed's {ev.get('baseline_loss')} at step {ev.get('step')})",
                     loss))
    rec["fired"] = bool(todo) or bool((rec.get("probe_rule") or {}).get("fired")) or bool(loss.get("fired"))
    metrics["leak_monitor"] = rec
    n_layers = max(1, scale.probe_n_layers)
    budget = RECHECK_MAX_MIXERS
    for label, why, where in todo:
        if budget <= 0:
            where.setdefault("recheck_skipped", []).append(label)
            continue
        budget -= n_layers if label != "lm" else max(1, scale.n_layers)
        violation, out = _recheck_trained(client, payload, label, why)
        where["recheck"] = (where.get("recheck") or []) + [out]
        if violation:
            rec["violation"] = violation
            return violation
    return None


class _NonCausal(Exception):
    """A trained model failed the post-training causality check inside lm-eval's scoring loop."""


def _harness_lm_eval(client: Any, payload: dict[str, Any], metrics: dict[str, Any], kept: list[str],
                     verified: dict[str, Any], after: dict[str, Any] | None = None) -> tuple[str | None, bool]:
    """At a scale with lm-eval tasks: run them here, in the harness, on log-likelihoods computed
    from the logits the worker returns for each request batch of the trained language model
    (the worker never reports a score), and write ``metrics["lm_eval"]`` and
    ``metrics["benchmark"]``. The first request batch is also checked for causality as the
    scored batches are (:func:`training.causal.check_trained`; recorded in ``after``, the
    ``causality_after_training`` record). Returns (problem or None, whether the problem is a
    causality violation)."""
    import os
    import random

    import torch

    from training.causal import after_training_positions, check_trained
    from training.harness import WorkerFailed
    from training.lm_eval_bridge import LMEvalError

    scale = payload_scale(payload)
    metrics["benchmark_kind"] = scale.benchmark  # the scale decides, not the worker's report
    metrics["lm_eval_tasks"] = list(scale.lm_eval_tasks) if scale.benchmark == "lm_eval" else []
    if scale.benchmark != "lm_eval":
        return None, False
    if "lm" not in kept:
        return "the worker kept no trained language model for the lm-eval tasks", False
    secret = random.Random(int.from_bytes(os.urandom(8), "little"))
    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    gen = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    state = {"checked": False, "calls": 0}
    dev: dict[str, Any] = {}
    raw = _logits_fn(client, "lm", dev)
    label = "lm (lm-eval requests)"

    def logits(x: Any) -> Any:
        y = raw(x.cpu())
        if y.shape[-1] < 256:
            raise WorkerFailed("protocol", f"logits of shape {tuple(y.shape)} for tokens {tuple(x.shape)}")
        return y

    def model(ids: Any) -> Any:
        y = logits(ids)
        state["calls"] += 1
        if not state["checked"] and ids.shape[1] > 1:
            state["checked"] = True
            res = check_trained(logits, ids.cpu(), 256, after_training_positions(int(ids.shape[1]), secret, rng),
                                gen, base=y, tol=LOGIT_LEAK_TOL)
            verified["max_logit_leak"] = max(float(verified.get("max_logit_leak") or 0.0), res["max_change"])
            if after is not None:
                after["models"].append(label)
                after["checked"] = True
                after.pop("reason", None)
                for key, val in (("positions", res["positions"]), ("batch", res["batch"]), ("length", res["length"]),
                                 ("source", "lm-eval request batch"), ("dtype", dev.get("dtype", "float32"))):
                    after.setdefault(key, {})[label] = val
                if res["worst"] is not None and res["max_change"] >= float(after.get("max_change") or 0.0):
                    after["worst"] = {"model": label, **res["worst"]}
                after["max_change"] = max(float(after.get("max_change") or 0.0), res["max_change"])
            if res["failing"]:
                bad = max(res["failing"], key=lambda f: f["change"])
                raise _NonCausal(f"{NON_CAUSAL_AFTER_TRAINING}: the trained lm model (lm-eval request batch, "
                                 f"L={res['length']}, batch {res['batch']}, eval mode, grad off, "
                                 f"{dev.get('dtype', 'float32')}): replacing tokens {bad['t']}.. moved the logits at "
                                 f"position {bad['position']}, change {bad['change']:.3g} > {LOGIT_LEAK_TOL:g}")
        return y

    from training.evaluate import add_lm_eval

    try:
        add_lm_eval(metrics, model, scale, int(payload.get("seed", 0)),
                    allow_hub=bool(payload.get("lm_eval_allow_hub", False)),
                    log=lambda line: print(line, flush=True))
    except _NonCausal as exc:
        if after is not None:
            after["violation"] = str(exc)
        return str(exc), True
    except WorkerFailed as exc:
        return f"the harness could not score the lm-eval tasks: {exc.reason}", False
    except LMEvalError as exc:
        return f"lm-eval: {exc}", False
    metrics["lm_eval"]["computed_by"] = "harness"
    metrics["lm_eval"]["logit_calls"] = state["calls"]
    verified["lm_eval"] = {t: v["score"] for t, v in metrics["lm_eval"]["tasks"].items()}
    return None, False


def _reject(metrics: dict[str, Any], reason: str) -> None:
    """Mark an evaluation ``rejected`` (a design finding, not a bug: no fitness, never ranked)."""
    metrics["status"], metrics["stop_reason"], metrics["error"] = "rejected", reason, None


class HalfwayCheckpoint:
    """The harness's side of the LM run's half-way checkpoint (``training.early_stop``).

    When the worker reaches step ``lm_steps // 2`` it waits; :meth:`answer` measures the
    checkpoint loss here, from the logits the worker returns for the fixed training-split
    windows (``training.evaluate.checkpoint_batches``), and, when the payload asks for early
    stopping (``early_stop: {spreads}``), decides against the seed's per-seed values in the
    payload's ``baseline`` (:func:`training.early_stop.reference` and ``decide``). :meth:`apply`
    then writes the harness's ``checkpoint`` and ``early_stop`` into the metrics, whatever the
    worker reported, and makes a stopped run ``stopped_early``."""

    def __init__(self, payload: dict[str, Any]) -> None:
        from training.early_stop import checkpoint_step

        self.payload = payload
        self.scale = payload_scale(payload)
        self.step = checkpoint_step(self.scale.lm_steps) if self.scale.has_lm else None
        self.client: Any = None
        self.measured: dict[str, Any] | None = None
        self.decision: Any = None

    def _loss(self) -> tuple[float | None, str | None]:
        from training.data import load_corpus
        from training.evaluate import checkpoint_batches
        from training.harness import WorkerFailed
        from training.trainer import IGNORE, sequence_loss
        from training.worker import CHECKPOINT_LABEL

        corpus = load_corpus((self.payload.get("kwargs") or {}).get("corpus_paths"))
        total, count = 0.0, 0
        for x, y in checkpoint_batches(corpus, self.scale):
            try:
                _, (z,) = self.client.call("logits", {"label": CHECKPOINT_LABEL}, [x], n_out=1)
            except WorkerFailed as exc:
                if exc.kind in ("died", "protocol"):
                    raise
                return None, f"the half-trained model failed on the checkpoint batches: {exc.reason}"
            if z.dim() != 3 or tuple(z.shape[:2]) != tuple(x.shape) or z.shape[-1] < 256:
                raise WorkerFailed("protocol", f"checkpoint logits of shape {tuple(z.shape)} for tokens {tuple(x.shape)}")
            n = int((y != IGNORE).sum())
            total += float(sequence_loss(z, y)) * n
            count += n
        loss = total / max(count, 1)
        return (loss, None) if math.isfinite(loss) else (None, "the checkpoint loss is not finite")

    def answer(self, header: dict[str, Any]) -> dict[str, Any]:
        """The worker's ``checkpoint`` frame: measure, decide, and say whether to stop."""
        from training.early_stop import DEFAULT_SPREADS, decide, reference
        from training.harness import WorkerFailed

        if self.step is None or header.get("step") != self.step:
            raise WorkerFailed("protocol", f"a checkpoint at step {header.get('step')!r}; the harness expects "
                                           f"{self.step!r}")
        loss, problem = self._loss()
        self.measured = {"step": self.step, "loss": None if loss is None else round(loss, 6),
                         "batches": self.scale.val_batches, "split": "train", "computed_by": "harness"}
        if problem:
            self.measured["problem"] = problem
        es = self.payload.get("early_stop")
        if not isinstance(es, dict):
            return {"stop": False}
        spreads = es.get("spreads", DEFAULT_SPREADS)
        spreads = float(spreads) if isinstance(spreads, (int, float)) and math.isfinite(spreads) else DEFAULT_SPREADS
        ref = reference(self.payload.get("baseline"), self.step, self.scale.val_batches, self.scale.name)
        self.decision = decide(loss, ref, spreads, self.step, self.scale.lm_steps)
        print(f"[early stop] {self.decision.text}", flush=True)
        return {"stop": self.decision.stop, "reason": self.decision.text}

    def apply(self, metrics: dict[str, Any]) -> str | None:
        """Put the harness's checkpoint and verdict into ``metrics``; returns a problem (the run
        stopped early, or skipped the checkpoint) or None."""
        from training.early_stop import STOPPED_EARLY

        said = metrics.get("checkpoint")
        metrics["checkpoint"] = self.measured
        metrics["early_stop"] = self.decision.to_dict() if self.decision is not None else None
        if self.measured is not None and isinstance(said, dict) and isinstance(said.get("loss"), (int, float)):
            self.measured["worker_loss"] = float(said["loss"])
        if self.decision is not None and self.decision.stop:
            metrics.update(status=STOPPED_EARLY, stop_reason=self.decision.text, error=None, val_loss=None,
                           val_bpb=None, partial=True)
            return self.decision.text
        if metrics.get("status") == STOPPED_EARLY:
            metrics.update(status="error", error="the worker stopped at the checkpoint without the harness's verdict")
            return metrics["error"]
        if self.step is not None and self.measured is None and metrics.get("status") == "ok":
            metrics.update(status="error", error="the worker skipped the half-way checkpoint of the language model")
            return metrics["error"]
        return None


def _evaluate_in_worker(request: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The evaluate task: the worker trains and evaluates the candidate (``training.evaluate``)
    and reports the metrics over the socketpair; the harness bounds them, recomputes the probe
    accuracies and the validation loss itself from the trained models' logits
    (:func:`_verify_metrics`), checks every trained model's causality in the scored configuration
    (:func:`_causality_after_training`, recorded in ``metrics["causality_after_training"]``; a
    violation makes the status ``rejected``), adds the worker's CPU seconds and peak memory read
    from /proc, and alone writes the result to the parent. (Training itself runs in the worker;
    its loss curve is the worker's word: see the README's threat model.)"""
    from training.harness import WorkerClient, WorkerFailed

    payload = request["payload"]
    mem_reason = f"exceeded {float(request['limits']['address_space_gib']):g} GiB address space"

    def progress(fraction: float, message: str) -> None:
        emit({"event": "progress", "fraction": fraction, "message": message})

    checkpoint = HalfwayCheckpoint(payload)
    with WorkerClient(request) as client:
        checkpoint.client = client
        try:
            vals, _ = client.call("evaluate", {"payload": payload, "static": bool(payload.get("static_check", True)),
                                               "checkpoint": checkpoint.step is not None},
                                  n_out=0, on_progress=progress, on_checkpoint=checkpoint.answer)
        except WorkerFailed as exc:
            return {"ok": False, "reason": mem_reason if exc.kind == "memory" else exc.reason,
                    "worker_cpu_s": round(client.cpu_seconds(), 3)}
        # the worker's own report covers the evaluation, not the harness's requests that follow
        cpu_reported_part = client.cpu_seconds()
        result = _json_safe(vals.get("result"))
        if not isinstance(result, dict):
            return {"ok": False, "reason": "the worker returned no evaluation result",
                    "worker_cpu_s": round(client.cpu_seconds(), 3)}
        metrics = result.get("metrics")
        status = metrics.get("status") if isinstance(metrics, dict) else None
        ok = result.get("ok") is True and status == "ok"
        reason = None if ok else str(result.get("reason") or f"evaluation {status or 'failed'}")[:500]
        verified: dict[str, Any] = {}
        if isinstance(metrics, dict):
            kept = [str(k) for k in (vals.get("kept") or []) if isinstance(k, str)]
            metrics.pop("leak_tolerance", None)  # the harness writes it (_leak_monitor)
            scored: dict[str, Any] = {}
            try:
                problem, verified, scored = _verify_metrics(client, payload, metrics, kept)
            except WorkerFailed as exc:
                problem = f"the harness could not verify the metrics: {exc.reason}"
            if problem:
                ok, reason = False, problem
            stop_problem = checkpoint.apply(metrics)  # the half-way rule, decided here
            if stop_problem:
                ok, reason = False, stop_problem
            try:  # every evaluation, whatever the verification found: a leak outranks a mismatch
                violation, after = _causality_after_training(client, payload, kept, scored)
            except WorkerFailed as exc:
                violation, after = None, {"checked": False, "reason": f"the harness could not run it: {exc.reason}"}
                ok, reason = False, reason or f"the harness could not check causality after training: {exc.reason}"
            metrics["causality_after_training"] = after
            verified["max_logit_leak"] = float(after.get("max_change") or 0.0)
            if violation:
                ok, reason = False, violation
                _reject(metrics, violation)
            elif isinstance(metrics, dict) and not problem:
                try:  # results too good to believe are re-checked before they are scored
                    flagged = _leak_monitor(client, payload, metrics, kept, verified)
                except WorkerFailed as exc:
                    flagged = None
                    ok, reason = False, f"the harness could not re-check causality for the leak monitor: {exc.reason}"
                if flagged:
                    ok, reason = False, flagged
                    _reject(metrics, flagged)
            # the task scores are the harness's alone: whatever the worker put there is dropped
            metrics["lm_eval"], metrics["benchmark"] = None, None
            if ok:
                problem, non_causal = _harness_lm_eval(client, payload, metrics, kept, verified, after)
                if problem:
                    ok, reason = False, problem
                    if non_causal:
                        _reject(metrics, problem)
                    else:
                        metrics["status"], metrics["error"] = "error", problem
            from training.evaluate import is_partial

            metrics["partial"] = is_partial(metrics)
        cpu = client.cpu_seconds()
        memory = client.memory_mib()
        said = metrics.get("cpu_seconds") if isinstance(metrics, dict) else None
        # the efficiency guard's basis is the worker's CPU time, which the harness reads from
        # /proc: a report far below it (start-up aside) is a lie
        if isinstance(said, (int, float)) and cpu_reported_part > float(said) + CPU_SLACK_S + 0.1 * cpu_reported_part \
                and ok:
            ok, reason = False, (f"the worker reported {float(said):.1f} CPU seconds; the harness measured "
                                 f"{cpu_reported_part:.1f} s of the worker's CPU time")
    out: dict[str, Any] = {"ok": ok, "reason": reason, "worker_cpu_s": round(cpu, 3), "worker_memory_mib": memory,
                           "verified": verified}
    if isinstance(metrics, dict):
        out["metrics"] = metrics
    return out


def scale_from_spec(spec: Any) -> Any:
    """:func:`training.scales.scale_from_spec` (imported lazily: torch is not loaded before the
    child's limits are set)."""
    from training.scales import scale_from_spec as f

    return f(spec)


def payload_scale(payload: dict[str, Any]) -> Any:
    """:func:`training.scales.payload_scale` (imported lazily, as :func:`scale_from_spec`)."""
    from training.scales import payload_scale as f

    return f(payload)


def _vm_peak_mib() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmPeak:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when the process that started it dies (Linux
    ``PR_SET_PDEATHSIG``), so that a console or loop killed mid-run leaves no evaluation running,
    and make it non-dumpable (``PR_SET_DUMPABLE`` 0: its memory and descriptors are out of reach
    of processes without capabilities, such as the worker).
    Done before the guard is installed (it refuses ctypes to candidate code)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        # PR_SET_DUMPABLE 0: without capabilities, no process (the worker included) may open this
        # harness's /proc/<pid>/mem or /proc/<pid>/fd/* (the result channel) or ptrace it
        libc.prctl(4, 0)
    except (OSError, AttributeError):
        return
    # the parent died before the request was even read (outside a PID namespace, where the
    # parent is bwrap's init with pid 1 and bwrap's own --die-with-parent covers this)
    if os.getppid() == 1 and "--pidns" not in sys.argv:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child."""
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m training.sandbox_child")
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--request", default=None, help="request JSON file (default: stdin)")
    parser.add_argument("--pidns", action="store_true", help="running as the init child of a PID namespace (bwrap)")
    args = parser.parse_args(argv)
    channel = ResultChannel(args.result_fd)
    try:
        text = Path(args.request).read_text() if args.request else sys.stdin.read()
        request = json.loads(text)
        limits = request["limits"]
        mem_reason = f"exceeded {float(limits['address_space_gib']):g} GiB address space"
        apply_limits(limits)
        os.chdir(request["run_dir"])
    except Exception as exc:
        channel.send({"event": "result", "ok": False, "reason": f"bad sandbox request: {exc}"})
        return 2
    try:
        result = run_task(request, channel)
    except MemoryError:
        result = {"ok": False, "reason": mem_reason}
    except CandidateError as exc:
        result = {"ok": False, "reason": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - everything becomes a reason
        if _memory_message(exc):
            result = {"ok": False, "reason": mem_reason}
        else:
            tb = traceback.format_exc(limit=8)
            print(tb, file=sys.stderr, flush=True)
            result = {"ok": False, "reason": f"{type(exc).__name__}: {str(exc)[:500]}"}
    result.setdefault("vm_peak_mib", _vm_peak_mib())
    try:
        channel.send({"event": "result", **result})
    except MemoryError:
        channel.send({"event": "result", "ok": False, "reason": mem_reason})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
