"""Causality measured where it counts: shared by the checker (check 5, on fresh and re-drawn
parameters) and the evaluation harness (the trained models, and the leak monitor's re-check).

Both run in the trusted sandbox harness and talk to the forked worker
(:class:`training.harness.WorkerClient`); neither the checker nor the harness imports the other
for this. The worker (:mod:`training.worker`) uses :func:`walk_parameters` only.

- :func:`scale_config` / :func:`scored_configs`: the scale as the sandbox carries it, and the
  (length, batch) settings that produce its metrics;
- :func:`causality_check`: check 5 (see :mod:`training.checker`);
- :func:`prefix_change`, :func:`max_abs`, :func:`walk_parameters`: the measurements underneath.
"""

from __future__ import annotations

import math
from typing import Any, Callable

#: how far an output before position t may move when inputs from t on change (check 5)
CAUSALITY_TOL = 1e-5


def scale_config(scale: Any) -> dict:
    """The sandbox's view of a scale (a name, a Scale, or this dict already): name, width,
    heads, budget, sequence length, LM batch, vocabulary, the probe specs and the probes'
    held-out evaluation batch (``probe_eval_batch``)."""
    if isinstance(scale, dict):
        return dict(scale)
    from training.scales import get_scale

    import dataclasses

    from training.probes import EVAL_BATCH_SIZE

    s = get_scale(scale)
    return {"name": s.name, "d_model": s.d_model, "n_heads": s.n_heads,
            "mixer_param_budget": s.mixer_param_budget, "seq_len": s.seq_len,
            "batch_size": s.batch_size, "has_lm": s.has_lm, "vocab_size": s.vocab_size,
            "probes": [{**dataclasses.asdict(p), "seq_len": p.seq_len, "vocab_size": p.vocab_size} for p in s.probes],
            "probe_eval_batch": EVAL_BATCH_SIZE}


def scored_configs(scale: dict) -> list[dict]:
    """The (length, batch, source) settings under which ``scale`` produces metrics - each probe's
    training batch (real probe tokens), its held-out evaluation batch, the LM's training and
    validation batch - plus two unscored ones (L=77, batch 2: a length no multiple of 64, and a
    longer one), read from the scale's probe specs and LM fields. Settings of the same shape are
    merged (their labels joined; real probe tokens are used when any of them is a probe's)."""
    out: list[dict] = []
    seen: set = set()

    def add(label: str, L: int, B: int, probe: dict | None = None) -> None:
        key = (L, B)  # one setting per shape; the labels of the others that share it are kept
        if L < 2 or B < 1:
            return
        if key in seen:
            prev = next(c for c in out if (c["L"], c["B"]) == key)
            prev["label"] += f", {label}"
            prev["probe"] = prev["probe"] or probe
            return
        seen.add(key)
        out.append({"label": label, "L": int(L), "B": int(B), "probe": probe})

    eval_bs = int(scale.get("probe_eval_batch", 64))
    for p in scale.get("probes") or []:
        add(f"probe {p.get('task')} (train batch)", int(p["seq_len"]), int(p.get("batch_size", 32)), p)
        add(f"probe {p.get('task')} (eval batch)", int(p["seq_len"]),
            min(eval_bs, int(p.get("eval_examples", eval_bs))), None)
    L, B = int(scale.get("seq_len", 128) or 128), int(scale.get("batch_size", 2) or 2)
    add("LM batch" if scale.get("has_lm", True) else "scale seq_len", L, B)
    add("unscored", 77, 2)
    add("unscored", max(L, 64) * 2 + 3, 1)
    return out


def walk_parameters(module: Any) -> list:
    """Unique parameters of a module tree, found through ``_parameters``/``_modules`` directly
    (a candidate could override ``parameters()``)."""
    import torch

    seen: dict[int, Any] = {}
    stack = [module]
    visited: set[int] = set()
    while stack:
        m = stack.pop()
        if id(m) in visited:
            continue
        visited.add(id(m))
        d = object.__getattribute__(m, "__dict__")
        for p in (d.get("_parameters") or {}).values():
            if isinstance(p, torch.Tensor):
                seen.setdefault(id(p), p)
        for v in d.values():  # plain tensors that need grads count too
            if isinstance(v, torch.Tensor) and v.requires_grad:
                seen.setdefault(id(v), v)
        for child in (d.get("_modules") or {}).values():
            if child is not None:
                stack.append(child)
    return list(seen.values())


def max_abs(t: Any) -> float:
    """Largest absolute value of ``t`` (NaN counts as infinite; 0.0 when empty)."""
    import torch

    if t.numel() == 0:
        return 0.0
    v = float(torch.nan_to_num(t.double(), nan=float("inf")).abs().max())
    return v if math.isfinite(v) else float("inf")


#: noise of the re-drawn parameters: each gets N(0, (REDRAW_SCALE * (rms + 0.2))^2) added
REDRAW_SCALE = 0.5
#: random-token vocabulary when no real batch is at hand (small: tokens repeat, as in text)
TOKEN_VOCAB = 24


def _embedder(vocab: int, d: int, gen: Any) -> Callable[[Any], Any]:
    """Tokens -> what the first mixer sees: a random embedding table (the backbone's
    ``nn.Embedding``), then the pre-norm (RMS-normalised rows). Repeated tokens give repeated rows."""
    import torch

    table = torch.randn(vocab, d, generator=gen)

    def embed(tok: Any) -> Any:
        x = table[tok]
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    return embed


def _tokens_for(cfg: dict, gen: Any) -> tuple[Any, int]:
    """A (B, L) token batch for one scored setting: the probe's own generator when the setting
    is a probe's training batch (real probe sequences), else random tokens with repeats."""
    import torch

    B, L, p = cfg["B"], cfg["L"], cfg.get("probe")
    if p:
        try:
            from training.probes import ProbeSpec, generate

            spec = ProbeSpec(task=p["task"], steps=int(p.get("steps", 1)), batch_size=int(p.get("batch_size", B)),
                             lr=float(p.get("lr", 1e-3)), eval_examples=int(p.get("eval_examples", 16)),
                             params=tuple(tuple(kv) for kv in p["params"]))
            tok, _ = generate(spec, B, int(torch.randint(0, 2 ** 30, (1,), generator=gen)))
            if tuple(tok.shape) == (B, L):
                return tok.long(), int(spec.vocab_size)
        except Exception:  # noqa: BLE001 - an unknown probe: random tokens below
            pass
    return torch.randint(0, TOKEN_VOCAB, (B, L), generator=gen), TOKEN_VOCAB


def prefix_change(a: Any, b: Any, t: int) -> tuple[float, int]:
    """Largest change of outputs before position ``t`` (NaN == NaN), and the position of it."""
    import torch

    if t <= 0:
        return 0.0, -1
    x, y = a[:, :t].double(), b[:, :t].double()
    both_nan = torch.isnan(x) & torch.isnan(y)
    diff = torch.where(both_nan, torch.zeros_like(x), torch.nan_to_num((x - y).abs(), nan=float("inf")))
    per_pos = diff.amax(dim=(0, 2)) if diff.dim() == 3 else diff.reshape(diff.shape[0], t, -1).amax(dim=(0, 2))
    pos = int(per_pos.argmax())
    v = float(per_pos[pos])
    return (v if math.isfinite(v) else float("inf")), pos


def causality_check(client: Any, scale: dict, options: dict, d: int, gen: Any, order: Any,
                    rebuild: Callable[[], Any], fwd: Callable, fwd_bwd: Callable,
                    params: str = "as-initialised") -> dict:
    """Check 5 in the configurations that produce the metrics (see :func:`scored_configs`).

    For every scored setting (length, batch; real probe tokens or random tokens with repeats,
    through an embedding and the pre-norm), with the parameters as initialised and re-drawn
    (every parameter perturbed, zero-initialised ones included), in train and eval mode, with
    autograd on and off: a base forward and one with every token from a random position t on
    replaced; no output before t may move. Plus Gaussian inputs at the scale's length and L=77
    (suffix and single-token changes), the gradient form, and batch independence. The configs of
    one parameter state go to the worker in one ``forward_many`` round trip, shuffled. ``gen`` (a
    torch Generator) and ``order`` (a ``random.Random``) are seeded from a secret the worker never
    sees; ``rebuild()`` restores the parameters as initialised (``params`` names that state:
    ``as-trained`` when the leak monitor re-checks a trained mixer). Returns the verdict as a dict
    of ``CheckResult`` fields."""
    import torch

    from training.harness import WorkerFailed

    configs = scored_configs(scale)
    configs = configs[: int(options.get("max_causal_configs", len(configs)))]
    embeds: dict[int, Callable] = {}
    leaks: list[tuple[float, str]] = []
    n_forwards = 0
    non_finite: list[str] = []
    for state in (params, "re-drawn"):
        if state == "re-drawn":
            client.call("redraw", {"seed": int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)),
                                   "scale": REDRAW_SCALE}, n_out=0)
        items: list[dict] = []
        xs: list[Any] = []
        meta: list[tuple] = []  # (base index or None, t, description)
        for cfg in configs:
            tok, vocab = _tokens_for(cfg, gen)
            vocab = max(vocab, int(tok.max()) + 1)
            embed = embeds.get(vocab) or embeds.setdefault(vocab, _embedder(vocab, d, gen))
            L, B = cfg["L"], cfg["B"]
            for mode in ("train", "eval"):
                for grad in (False, True):
                    seed = int(torch.randint(1, 2 ** 31 - 1, (1,), generator=gen))
                    t = int(torch.randint(1, L, (1,), generator=gen))
                    tok2 = tok.clone()
                    tok2[:, t:] = torch.randint(0, vocab, (B, L - t), generator=gen)
                    tok2[:, t] = (tok[:, t] + 1 + torch.randint(0, vocab - 1, (B,), generator=gen)) % vocab
                    where = (f"L={L}, batch {B}, {mode} mode, grad {'on' if grad else 'off'}, "
                             f"params {state}, {cfg['label']}")
                    base = len(xs)
                    for k, tk in enumerate((tok, tok2)):
                        items.append({"mode": mode, "grad": grad, "seed": seed})
                        xs.append(embed(tk))
                        meta.append((None if k == 0 else base, t, where))
        if state == params:  # Gaussian inputs too (deeper layers do not see token rows)
            for L in (int(options.get("causal_len", scale.get("seq_len", 128) or 128)), 77):
                for mode in ("train", "eval"):
                    seed = int(torch.randint(1, 2 ** 31 - 1, (1,), generator=gen))
                    x = torch.randn(2, L, d, generator=gen)
                    base = len(xs)
                    items.append({"mode": mode, "grad": False, "seed": seed})
                    xs.append(x)
                    meta.append((None, 0, ""))
                    picks = {1, 2, L // 4, L // 2, L - 1, 63 if L > 64 else L // 3}
                    picks |= {int(v) for v in torch.randint(1, L, (2,), generator=gen)}
                    for t in sorted(picks):
                        for kind in ("suffix", "token"):
                            x2 = x.clone()
                            if kind == "suffix":
                                x2[:, t:] = torch.randn(2, L - t, d, generator=gen) * 3
                            else:
                                x2[:, t] = torch.randn(2, d, generator=gen) * 3
                            items.append({"mode": mode, "grad": False, "seed": seed})
                            xs.append(x2)
                            what = f"tokens {t}.." if kind == "suffix" else f"token {t}"
                            meta.append((base, t, f"Gaussian inputs, {what}, L={L}, batch 2, {mode} mode, "
                                                  f"grad off, params {params}"))
        perm = list(range(len(xs)))
        order.shuffle(perm)  # the worker cannot tell a reference run from a perturbed one
        by_shape: dict[tuple, list[int]] = {}
        for i in perm:
            by_shape.setdefault(tuple(xs[i].shape), []).append(i)
        groups = list(by_shape.values())
        _, ys = client.call("forward_many", {"groups": [[items[i] for i in g] for g in groups]},
                            [torch.stack([xs[i] for i in g]) for g in groups], n_out=len(groups))
        out: list[Any] = [None] * len(xs)
        for g, y in zip(groups, ys):
            if tuple(y.shape) != (len(g),) + tuple(xs[g[0]].shape):
                raise WorkerFailed("error", f"forward returned {tuple(y.shape[1:])} for input {tuple(xs[g[0]].shape)}")
            for j, i in enumerate(g):
                out[i] = y[j]
        n_forwards += len(xs)
        for i, (base, t, where) in enumerate(meta):
            if base is None:
                if not bool(torch.isfinite(out[i]).all()) and len(non_finite) < 3:
                    non_finite.append(where or "Gaussian inputs")
                continue
            v, pos = prefix_change(out[base], out[i], t)
            if v > CAUSALITY_TOL:
                head = where if where.startswith("Gaussian") else f"changing tokens {t}.. ({where})"
                leaks.append((v, f"{head} changed the output at position {pos} by {v:.3g}"))
    rebuild()  # the later checks see the parameters as initialised
    worst = max((v for v, _ in leaks), default=0.0)
    # gradient form: d out[:, :t] / d x[:, t:] must vanish
    L = int(options.get("causal_len", scale.get("seq_len", 128) or 128))
    x = torch.randn(2, L, d, generator=gen)
    seed = int(torch.randint(1, 2 ** 31 - 1, (1,), generator=gen))
    for t in (1, L // 2, L - 1):
        g = torch.zeros(2, L, d)
        g[:, :t] = 1.0
        _, (y, gx) = fwd_bwd(x, g, seed=seed)
        if tuple(gx.shape) == tuple(x.shape):
            leak = max_abs(gx[:, t:])
            if leak > CAUSALITY_TOL:
                leaks.append((leak, f"outputs before {t} have gradient {leak:.3g} w.r.t. later inputs "
                                    f"(Gaussian inputs, L={L}, batch 2, train mode, grad on, params {params})"))
    worst = max((v for v, _ in leaks), default=0.0)
    # batch independence (train and eval mode)
    cross, cross_mode = 0.0, "train"
    for training in (True, False):
        mode = "train" if training else "eval"
        x = torch.randn(3, 64, d, generator=gen)
        x2 = x.clone()
        x2[1] = torch.randn(64, d, generator=gen) * 3
        pair = [x, x2]
        order.shuffle(pair)
        ys2 = {id(v): fwd(v, mode, seed) for v in pair}
        y0, y2 = ys2[id(x)], ys2[id(x2)]
        c = max(max_abs(y2[0] - y0[0]), max_abs(y2[2] - y0[2]))
        if c > cross:
            cross, cross_mode = c, mode
    leaks.sort(key=lambda e: -e[0])
    settings = [f"L={c['L']} batch {c['B']} ({c['label']})" for c in configs]
    details = {"max_leak": worst, "batch_leak": cross, "forwards": n_forwards + 5, "settings": settings,
               "failing": [w for _, w in leaks[:8]], "n_failing": len(leaks), "non_finite": non_finite}
    if worst > CAUSALITY_TOL:
        more = f" (and {len(leaks) - 1} more failing configurations)" if len(leaks) > 1 else ""
        return _verdict(False, worst, f"not causal: {leaks[0][1]}{more}", details)
    if cross > CAUSALITY_TOL:
        return _verdict(False, cross,
                        f"samples are not independent: changing sample 1 changed samples 0 and 2 by {cross:.3g} "
                        f"(Gaussian inputs, L=64, batch 3, {cross_mode} mode, grad off, params {params})",
                        details)
    Ls = sorted({c["L"] for c in configs})
    return _verdict(True, max(worst, cross),
                    f"no output before t moved (max {worst:.2g} <= {CAUSALITY_TOL:g}) in {len(configs)} settings "
                    f"(L={'/'.join(map(str, Ls))}) x params {params}/re-drawn x train/eval x grad on/off "
                    f"on token inputs, and on Gaussian inputs; samples independent", details)


def forward_fns(client: Any, where: dict | None = None) -> tuple[Callable, Callable]:
    """``(fwd, fwd_bwd)``: the worker's ``forward`` op on the selected model. ``fwd(x, mode,
    seed)`` runs a forward with autograd off and checks the output's shape and dtype;
    ``fwd_bwd(x, g, seed, param_grads=False)`` a forward+backward in train mode, returning
    ``(values, [y, x.grad, (param grads)])``. ``where["config"]`` is set to the configuration of
    the call in flight (length, batch, mode, grad), so that a failure can name it."""
    from training.harness import WorkerFailed

    def note(x: Any, mode: str, grad: bool) -> None:
        if where is not None:
            where["config"] = (f"L={int(x.shape[1])}, batch {int(x.shape[0])}, {mode} mode, "
                               f"grad {'on' if grad else 'off'}")

    def fwd(x: Any, mode: str = "train", seed: int | None = None) -> Any:
        note(x, mode, False)
        _, (y,) = client.call("forward", {"mode": mode, "seed": seed}, [x], n_out=1)
        if tuple(y.shape) != tuple(x.shape) or y.dtype != x.dtype:
            raise WorkerFailed("error", f"forward returned {y.dtype} {tuple(y.shape)} for input "
                               f"{x.dtype} {tuple(x.shape)}")
        return y

    def fwd_bwd(x: Any, g: Any, seed: int | None, param_grads: bool = False) -> tuple:
        note(x, "train", True)
        n = 3 if param_grads else 2
        vals, out = client.call("forward", {"mode": "train", "seed": seed, "backward": True,
                                            "param_grads": param_grads}, [x, g], n_out=n)
        return vals, out

    return fwd, fwd_bwd


def _verdict(passed: bool, value: float, reason: str, details: dict) -> dict:
    """A check's verdict as the fields of ``training.checker.CheckResult`` (name ``causality``)."""
    return {"name": "causality", "passed": passed, "value": value, "reason": reason, "details": details}


# --------------------------------------------------------------------------- after training

#: how far a trained model's logits before position t may move when the tokens from t on change
LOGIT_LEAK_TOL = 1e-4
#: random positions checked per trained model besides the first, the last and the secret one
AFTER_TRAINING_RANDOM = 2


def after_training_positions(length: int, secret: Any, rng: Any, n_random: int = AFTER_TRAINING_RANDOM) -> list[int]:
    """The positions t at which the harness replaces the tokens t.. of a trained model's scored
    batch: the first (t=1: the output at 0 must not see anything later), the last (t=L-1: only the
    last token changes), one drawn from ``secret`` (a ``random.Random`` seeded from the OS) and
    ``n_random`` more from ``rng``. Sorted, distinct, within 1..L-1."""
    if length < 2:
        return []
    picks = {1, length - 1, secret.randrange(1, length)}
    picks |= {rng.randrange(1, length) for _ in range(n_random)}
    return sorted(picks)


def check_trained(logits: Callable[[Any], Any], tokens: Any, vocab: int, positions: list[int], gen: Any,
                  base: Any = None, tol: float = LOGIT_LEAK_TOL) -> dict:
    """Causality of a trained model on one scored batch, in the scored configuration.

    ``logits(tokens) -> [B, L, V]`` is the harness's channel to the trained model, the very call
    that produced the scored metrics (same mode, grad setting, dtype, batch and length);
    ``tokens`` ([B, L] int64) is a scored batch (real validation or probe inputs) and ``base``
    its logits from the scored forward (computed here when None). For each ``t`` in ``positions``
    every token from t on is replaced (token t always by a different one, drawn with ``gen``) and
    the logits before t must not move by more than ``tol``. Returns ``{length, batch, positions,
    max_change, worst: {t, position, change} | None, failing: [{t, position, change}, ...]}``."""
    import torch

    B, L = int(tokens.shape[0]), int(tokens.shape[1])
    a = logits(tokens) if base is None else base
    worst: dict | None = None
    failing: list[dict] = []
    max_change = 0.0
    vocab = max(int(vocab), int(tokens.max()) + 1, 2)
    for t in positions:
        x2 = tokens.clone()
        x2[:, t:] = torch.randint(0, vocab, (B, L - t), generator=gen)
        x2[:, t] = (tokens[:, t] + 1 + torch.randint(0, vocab - 1, (B,), generator=gen)) % vocab
        v, pos = prefix_change(a, logits(x2), t)
        rec = {"t": int(t), "position": int(pos), "change": v}
        if worst is None or v > worst["change"]:
            worst = rec
        max_change = max(max_change, v)
        if v > tol:
            failing.append(rec)
    return {"length": L, "batch": B, "positions": [int(t) for t in positions], "max_change": max_change,
            "worst": worst, "failing": failing}
