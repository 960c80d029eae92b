"""Named evaluation scales (docs/ARCHITECTURE.md, "The evaluation ladder").

- ``demo``: CPU, the default of a new lab: noisy and fuzzy recall only, 120 steps each.
- ``probe``: CPU, tens of seconds: the synthetic probes only, at tiny width.
- ``explore``: CPU, at most ~3 minutes: the probes plus byte-level LM training on the shipped
  English corpus, scored in validation bits per byte.
- ``verify-mini``: CPU, about a minute: the verify code path (LM training, then lm-eval tasks on
  the trained model scored by the harness) at toy size, for tests and for a look without a GPU.
- ``verify``: GPU: a larger model, many more tokens, and lm-eval tasks.

The probe settings were chosen by measurement on the shared 2-core CPU (torch 2.13, one thread,
machine loaded by other jobs; benchmarks/baseline_ranking.py reproduces them). The accuracies and
losses below were measured under evaluation protocol 1 (the backbone initialised N(0, 0.02^2) at
every width); protocol 2 (``training.evaluate.EVAL_VERSION``: N(0, 1/d_model)) raises every
mixer's probe accuracy (seed 0, probe scale: DeltaNet 0.62 -> 0.83, linear attention 0.44 -> 0.72)
and the step counts were not re-tuned for it:
- probe models are d=64, 2 layers, 2 heads; lr 1e-2 (softmax attention reaches 0.09 / 0.17 / 0.99
  MQAR accuracy in 250 steps at lr 3e-3 / 5e-3 / 1e-2). 100-250 steps per probe.
- probe scale, mean accuracy seed 0 / seed 1: softmax 0.87/0.85, DeltaNet 0.63/0.63, linear
  attention 0.42/0.45, RetNet 0.24/0.36, GLA 0.29/0.26, Gated DeltaNet 0.25/0.27. Noisy and fuzzy
  recall separate the delta rule (0.98, 0.93) from linear attention (0.35, 0.55); MQAR (T=64, 8 pairs, vocab 128) is solved only by
  softmax attention at this budget (DeltaNet needs > 500 steps). Decayed/gated mixers learn
  recall much more slowly in 200 steps than the literature's converged order suggests.
- CPU time per probe-scale evaluation (one thread): 49-85 s (GLA the slowest); wall time up to
  5x more when the machine is loaded.
- demo scale (noisy + fuzzy recall, 120 steps each, one thread, machine at load average 6-14 on
  2 cores), mean accuracy seed 0 / seed 1: DeltaNet 0.962 / 0.785, linear attention 0.309 / 0.296;
  CPU seconds per evaluation: DeltaNet 43-49, linear attention 28-32 (wall 140-210 s at that load).
  No wall-time budget anywhere: a run does its steps; training.guards ends only runaway designs.
- explore (LM: 300 steps x 16 x 256 = 1.2M bytes, d=128, 2 layers), seed 0, validation bits per
  byte: Gated DeltaNet 2.53, GLA 2.63, RetNet 2.67, softmax 2.68, DeltaNet 2.78, linear attention
  3.24; 8-14k tokens/s on one thread under load; 143-285 s wall per evaluation under load
  (LM part 91-155 s).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from training.probes import ProbeSpec, probe


@dataclass(frozen=True)
class Scale:
    """One rung of the evaluation ladder. LM fields are ignored when ``lm_steps == 0``."""

    name: str
    d_model: int
    n_heads: int
    n_layers: int
    vocab_size: int
    seq_len: int
    batch_size: int
    lm_steps: int
    lr: float
    mixer_param_budget: int
    probes: tuple[ProbeSpec, ...]
    # probe models (they train from scratch on each probe task)
    probe_d_model: int = 64
    probe_n_heads: int = 2
    probe_n_layers: int = 2
    # LM training details
    warmup_steps: int = 30
    val_batches: int = 4
    log_every: int = 10
    #: lm-eval tasks run on the trained language model (their mean score is the scale's benchmark
    #: term of fitness; the probes are then diagnostics). Shipped offline tasks by default; a hub
    #: task name needs a network (see training.lm_eval_bridge).
    lm_eval_tasks: tuple[str, ...] = ()
    #: documents per lm-eval task (None: all of them)
    lm_eval_limit: int | None = None
    #: ``(task, metric)`` pairs naming the metric that is a task's score (default ``acc``)
    lm_eval_metrics: tuple[tuple[str, str], ...] = ()
    #: longest input of the lm-eval requests (None: ``seq_len``)
    lm_eval_max_length: int | None = None
    device: str = "cpu"
    description: str = ""
    extra: tuple[tuple[str, object], ...] = field(default_factory=tuple)
    #: rough wall seconds of one evaluation of the seed on one thread of a busy machine; it only
    #: sizes the hang guard before the seed has been measured (``max(min_wall_s, wall_factor x
    #: this)``: generous, since a shared CPU can be 10-20x slower than an idle one). Never a
    #: budget: runs do their fixed steps.
    expected_seconds: float = 120.0

    @property
    def lm_tokens(self) -> int:
        """Training tokens of the LM run."""
        return self.lm_steps * self.batch_size * self.seq_len

    @property
    def has_lm(self) -> bool:
        """Whether this scale trains a language model."""
        return self.lm_steps > 0

    @property
    def benchmark(self) -> str:
        """What the benchmark term of fitness is at this scale: ``"lm_eval"`` (the mean of the
        lm-eval task scores) when the scale trains an LM and names lm-eval tasks, else
        ``"probes"`` (the probe mean)."""
        return "lm_eval" if self.lm_eval_tasks and self.has_lm else "probes"

    def lm_eval_metric(self, task: str) -> str:
        """The metric that is ``task``'s score (``acc`` unless ``lm_eval_metrics`` says)."""
        return dict(self.lm_eval_metrics).get(task, "acc")


# Probe suites. Recall probes are sized so that state capacity matters (measured: T=64 with 4
# pairs separates no mixer from another); the others are MAD's tasks at small size.
_PROBE_SUITE = (
    probe("mqar", vocab_size=128, seq_len=64, num_kv_pairs=8, steps=250, batch_size=32, lr=1e-2),
    probe("noisy_recall", vocab_size=64, seq_len=64, num_keys=8, noise_vocab=16, frac_noise=0.2,
          steps=200, batch_size=32, lr=1e-2),
    probe("fuzzy_recall", vocab_size=16, seq_len=64, num_keys=6, key_len=2, value_len=2,
          steps=200, batch_size=32, lr=1e-2),
    probe("selective_copy", vocab_size=32, seq_len=64, num_tokens=8, steps=200, batch_size=32, lr=1e-2),
    probe("compression", vocab_size=8, seq_len=48, steps=150, batch_size=32, lr=1e-2),
    probe("memorization", vocab_size=256, seq_len=32, num_keys=128, steps=100, batch_size=32, lr=1e-2),
)

_VERIFY_PROBES = (
    probe("mqar", vocab_size=8192, seq_len=512, num_kv_pairs=64, steps=2000, batch_size=64, lr=1e-3,
          eval_examples=1024),
    probe("noisy_recall", vocab_size=128, seq_len=256, num_keys=32, noise_vocab=32, frac_noise=0.2,
          steps=1000, batch_size=64, lr=1e-3, eval_examples=1024),
    probe("fuzzy_recall", vocab_size=16, seq_len=256, num_keys=16, key_len=3, value_len=3,
          steps=1000, batch_size=64, lr=1e-3, eval_examples=1024),
    probe("selective_copy", vocab_size=64, seq_len=256, num_tokens=32, steps=1000, batch_size=64, lr=1e-3,
          eval_examples=1024),
    probe("compression", vocab_size=8, seq_len=128, steps=1000, batch_size=64, lr=1e-3, eval_examples=1024),
    probe("memorization", vocab_size=1024, seq_len=64, num_keys=512, steps=1000, batch_size=64, lr=1e-2,
          eval_examples=1024),
)

# The demo suite: the two probes that separate the delta rule from plain linear attention most
# (noisy and fuzzy recall), at 120 steps each.
#: The shipped (offline) lm-eval tasks scored at verify: accuracies in [0, 1] (the bits-per-byte
#: task is a loss, already measured by the validation loss, and left out of the mean).
VERIFY_LM_EVAL_TASKS = ("shakespeare_cloze", "shakespeare_lastword", "probe_mqar", "probe_noisy_recall",
                        "probe_fuzzy_recall", "probe_selective_copy", "probe_compression")
#: lm-eval's own tasks usually reported for small LMs; they download their data from the Hugging
#: Face hub, so they run only when asked (``--lm-eval-tasks``) on a machine with a network.
HUB_LM_EVAL_TASKS = ("lambada_openai", "piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande")

_VERIFY_MINI_PROBES = (
    probe("noisy_recall", vocab_size=64, seq_len=64, num_keys=8, noise_vocab=16, frac_noise=0.2,
          steps=40, batch_size=16, lr=1e-2, eval_examples=128),
)

_DEMO_SUITE = (
    probe("noisy_recall", vocab_size=64, seq_len=64, num_keys=8, noise_vocab=16, frac_noise=0.2,
          steps=120, batch_size=32, lr=1e-2),
    probe("fuzzy_recall", vocab_size=16, seq_len=64, num_keys=6, key_len=2, value_len=2,
          steps=120, batch_size=32, lr=1e-2),
)

SCALES: dict[str, Scale] = {
    "demo": Scale(
        name="demo",
        d_model=64, n_heads=2, n_layers=2, vocab_size=256, seq_len=128, batch_size=16,
        lm_steps=0, lr=3e-3, expected_seconds=90.0,
        mixer_param_budget=8 * 64 * 64,
        probes=_DEMO_SUITE,
        description="two recall probes (CPU, under a minute per experiment; the default of a new lab)",
    ),
    "probe": Scale(
        name="probe",
        d_model=64, n_heads=2, n_layers=2, vocab_size=256, seq_len=128, batch_size=16,
        lm_steps=0, lr=3e-3, expected_seconds=180.0,
        mixer_param_budget=8 * 64 * 64,
        probes=_PROBE_SUITE,
        description="synthetic probes only (CPU, tens of seconds)",
    ),
    "explore": Scale(
        name="explore",
        d_model=128, n_heads=4, n_layers=2, vocab_size=256, seq_len=256, batch_size=16,
        lm_steps=300, lr=3e-3, expected_seconds=480.0,
        mixer_param_budget=8 * 128 * 128,
        probes=_PROBE_SUITE,
        warmup_steps=25, val_batches=8,
        description="probes + byte-level LM on the English corpus (CPU, ~3 minutes)",
    ),
    "verify-mini": Scale(
        name="verify-mini",
        d_model=64, n_heads=2, n_layers=2, vocab_size=256, seq_len=128, batch_size=8,
        lm_steps=300, lr=3e-3, expected_seconds=120.0,
        mixer_param_budget=8 * 64 * 64,
        probes=_VERIFY_MINI_PROBES,
        warmup_steps=10, val_batches=2, log_every=20,
        lm_eval_tasks=("shakespeare_cloze", "probe_noisy_recall"), lm_eval_limit=100,
        description="the verify code path on CPU in about a minute: tiny byte LM, 2 offline lm-eval tasks",
    ),
    "verify": Scale(
        name="verify",
        d_model=512, n_heads=8, n_layers=8, vocab_size=256, seq_len=1024, batch_size=32,
        lm_steps=6000, lr=1e-3, expected_seconds=4 * 3600.0,
        mixer_param_budget=8 * 512 * 512,
        probes=_VERIFY_PROBES,
        probe_d_model=128, probe_n_heads=4, probe_n_layers=2,
        warmup_steps=300, val_batches=64, log_every=50,
        lm_eval_tasks=VERIFY_LM_EVAL_TASKS, lm_eval_max_length=1024,
        device="cuda",
        description="GPU: ~25M-parameter byte LM, ~200M tokens, lm-eval tasks",
    ),
}


def scale_from_dict(d: dict) -> Scale:
    """Rebuild a :class:`Scale` from ``dataclasses.asdict(scale)`` (e.g. after a JSON round trip,
    as a custom scale crosses into the sandbox child)."""
    import dataclasses

    from training.probes import ProbeSpec

    known = {f.name for f in dataclasses.fields(Scale)}
    d = {k: v for k, v in d.items() if k in known}  # e.g. the retired ``time_budget_s``
    d["probes"] = tuple(
        p if isinstance(p, ProbeSpec) else ProbeSpec(**{**p, "params": tuple(tuple(kv) for kv in p["params"])})
        for p in d.get("probes", ()))
    for key in ("lm_eval_tasks", "extra", "lm_eval_metrics"):
        if key in d:
            d[key] = tuple(tuple(x) if isinstance(x, list) else x for x in d[key])
    return Scale(**d)


def get_scale(name: str | Scale | dict) -> Scale:
    """The scale called ``name`` (a :class:`Scale` is returned unchanged; a dict from
    ``dataclasses.asdict`` is rebuilt with :func:`scale_from_dict`)."""
    if isinstance(name, Scale):
        return name
    if isinstance(name, dict):
        return scale_from_dict(name)
    try:
        return SCALES[name]
    except KeyError:
        raise ValueError(f"unknown scale {name!r}; choose one of: {', '.join(SCALES)}") from None


def scaled_down(scale: Scale | str, factor: float = 0.1, **overrides) -> Scale:
    """A cheaper copy of a scale (steps of the LM and of every probe multiplied by ``factor``),
    for tests and smoke runs; ``overrides`` replace fields."""
    s = get_scale(scale)
    probes = tuple(replace(p, steps=max(2, int(p.steps * factor)), eval_examples=max(16, int(p.eval_examples * factor)))
                   for p in s.probes)
    lm_steps = max(2, int(s.lm_steps * factor)) if s.lm_steps else 0
    fields = dict(probes=probes, lm_steps=lm_steps, warmup_steps=max(1, int(s.warmup_steps * factor)),
                  name=s.name)
    fields.update(overrides)
    return replace(s, **fields)


def scale_from_spec(spec: str | Scale | dict) -> Scale:
    """A :class:`Scale` from a sandbox payload's scale: a name, a Scale, or a Scale turned into a
    dict by ``dataclasses.asdict`` and JSON (nested probe specs and tuples rebuilt)."""
    return get_scale(spec)


def payload_scale(payload: dict) -> Scale:
    """The :class:`Scale` an evaluate payload names (``scale``, optional ``scale_factor`` and
    ``scale_overrides``: a cheaper copy via :func:`scaled_down`), the same in the sandbox harness
    and in its worker."""
    scale = scale_from_spec(payload.get("scale", "explore"))
    if payload.get("scale_factor") is not None or payload.get("scale_overrides"):
        return scaled_down(scale, float(payload.get("scale_factor") or 1.0), **(payload.get("scale_overrides") or {}))
    return scale
