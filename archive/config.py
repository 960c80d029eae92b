"""The lab's configuration: ``asiarch.toml``.

:class:`LabConfig` holds every setting; :func:`load_config` reads and validates the file (an error
names the key), :func:`render_config` / :func:`write_config` write it from a commented template so
that each setting is documented in the file itself.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "asiarch.toml"

ROLES = ("researcher", "analyst", "judge", "debugger")
BACKENDS = ("builtin", "ollama", "openai")
MODES = ("autonomous", "supervised")
SCALES = ("demo", "probe", "explore", "verify")
EXECUTORS = ("local", "ray")
EMBEDDING_BACKENDS = ("fastembed", "ollama")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


@dataclass
class LLMConfig:
    """[llm]: which backend and model each agent role uses."""

    researcher: str = "builtin"
    analyst: str = "builtin"
    judge: str = "builtin"
    debugger: str = "builtin"
    researcher_model: str = "qwen3:8b"
    analyst_model: str = "qwen3:8b"
    judge_model: str = "qwen3:8b"
    debugger_model: str = "qwen3:8b"
    ollama_host: str = "http://127.0.0.1:11434"
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    #: the server's context in tokens (0: ask the server; llama.cpp's default 2048 if it does not say)
    context_length: int = 0
    #: reply limits per role in tokens (0: from the role's reply schema: 1536 with code, less without)
    researcher_max_tokens: int = 0
    analyst_max_tokens: int = 0
    judge_max_tokens: int = 0
    debugger_max_tokens: int = 0
    #: sampling temperature of a first answer and of its correction round (kept different)
    temperature: float = 0.7
    correction_temperature: float = 0.2
    #: wall-clock limit of one call in seconds, streaming included (0: the request timeout)
    call_timeout_s: float = 0.0
    #: consecutive failures of a role before its built-in agent takes over, and for how long
    breaker_failures: int = 3
    breaker_minutes: float = 10.0


@dataclass
class LoopConfig:
    """[loop]: how the research loop runs."""

    mode: str = "autonomous"
    scale: str = "explore"
    experiments: int = 0
    hours: float = 0.0
    novelty_threshold: float = 0.80
    novelty_rounds: int = 3
    debug_rounds: int = 3
    seed: int = 0
    seeds: int = 3
    top_k_seeds: int = 5
    #: end a candidate's first-seed LM run at its half-way checkpoint when its loss there is
    #: more than ``early_stop_spreads`` of the seed's seed-to-seed standard deviations above the
    #: seed's (status ``stopped_early``; training.early_stop, docs/NOISE.md)
    early_stop: bool = True
    early_stop_spreads: float = 1.0


@dataclass
class SamplingConfig:
    """[sampling]: the candidate set (docs/ARCHITECTURE.md step 1)."""

    top_k: int = 10
    reference_ranks: list[int] = field(default_factory=lambda: [11, 50])
    n_references: int = 4


@dataclass
class ExecutorConfig:
    """[executor]: where evaluations run."""

    kind: str = "local"
    ray_address: str = "auto"
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    concurrency: int = 1
    #: run untrusted candidates without the OS sandbox (bubblewrap) where it is unavailable
    unsafe_no_sandbox: bool = False


@dataclass
class DataConfig:
    """[data]: training corpus files."""

    corpus: list[str] = field(default_factory=list)


@dataclass
class EmbeddingConfig:
    """[embedding]: the text embedder used by the novelty index and the cognition base."""

    backend: str = "fastembed"
    model: str = "all-MiniLM-L6-v2"


@dataclass
class GuardsConfig:
    """[guards]: when an evaluation is ended early (training.guards; wall time is no budget)."""

    cpu_factor: float = 8.0
    wall_factor: float = 20.0
    min_wall_s: float = 600.0
    min_cpu_s: float = 10.0


@dataclass
class LabConfig:
    """Every setting of a lab (the parsed ``asiarch.toml``)."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, section by section."""
        return dataclasses.asdict(self)

    def validate(self, source: str = CONFIG_NAME) -> None:
        """Raise :class:`ConfigError` naming the first bad key."""

        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"{source}: [{key.split('.')[0]}] {key.split('.', 1)[1]} {msg}")

        for role in ROLES:
            v = getattr(self.llm, role)
            if v not in BACKENDS:
                raise bad(f"llm.{role}", f"is {v!r}; it must be one of {', '.join(BACKENDS)}")
        for key in ("context_length", "researcher_max_tokens", "analyst_max_tokens", "judge_max_tokens",
                    "debugger_max_tokens"):
            if getattr(self.llm, key) < 0:
                raise bad(f"llm.{key}", "must be 0 (automatic) or a positive number of tokens")
        if self.llm.context_length and self.llm.context_length < 256:
            raise bad("llm.context_length", "must be 0 (ask the server) or at least 256 tokens")
        for key in ("temperature", "correction_temperature"):
            if not 0.0 <= getattr(self.llm, key) <= 2.0:
                raise bad(f"llm.{key}", "must be between 0 and 2")
        if self.llm.call_timeout_s < 0 or self.llm.breaker_minutes < 0:
            raise bad("llm.call_timeout_s" if self.llm.call_timeout_s < 0 else "llm.breaker_minutes",
                      "must be 0 or more")
        if self.llm.breaker_failures < 1:
            raise bad("llm.breaker_failures", "must be at least 1")
        if self.loop.mode not in MODES:
            raise bad("loop.mode", f"is {self.loop.mode!r}; it must be one of {', '.join(MODES)}")
        if self.loop.scale not in SCALES:
            raise bad("loop.scale", f"is {self.loop.scale!r}; it must be one of {', '.join(SCALES)}")
        if self.loop.experiments < 0:
            raise bad("loop.experiments", "must be 0 (no limit) or a positive number")
        if self.loop.hours < 0:
            raise bad("loop.hours", "must be 0 (no limit) or a positive number of hours")
        if not 0.0 < self.loop.novelty_threshold <= 1.0:
            raise bad("loop.novelty_threshold", "must be a cosine similarity in (0, 1]")
        for key in ("novelty_rounds", "debug_rounds"):
            if getattr(self.loop, key) < 0:
                raise bad(f"loop.{key}", "must be 0 or more")
        if self.loop.seeds < 1:
            raise bad("loop.seeds", "must be at least 1 (3 gives every design in the top an interval)")
        if self.loop.top_k_seeds < 1:
            raise bad("loop.top_k_seeds", "must be at least 1")
        if not self.loop.early_stop_spreads >= 0:
            raise bad("loop.early_stop_spreads", "must be 0 or more (standard deviations of the seed's checkpoint loss)")
        if self.sampling.top_k < 1:
            raise bad("sampling.top_k", "must be at least 1")
        rr = self.sampling.reference_ranks
        if len(rr) != 2 or rr[0] < 1 or rr[1] < rr[0]:
            raise bad("sampling.reference_ranks", f"is {rr!r}; it must be [first, last] with 1 <= first <= last")
        if self.sampling.n_references < 0:
            raise bad("sampling.n_references", "must be 0 or more")
        if self.executor.kind not in EXECUTORS:
            raise bad("executor.kind", f"is {self.executor.kind!r}; it must be one of {', '.join(EXECUTORS)}")
        if self.executor.cpus_per_task <= 0:
            raise bad("executor.cpus_per_task", "must be positive")
        if self.executor.gpus_per_task < 0:
            raise bad("executor.gpus_per_task", "must be 0 or more")
        if self.executor.concurrency < 1:
            raise bad("executor.concurrency", "must be at least 1")
        if self.embedding.backend not in EMBEDDING_BACKENDS:
            raise bad("embedding.backend", f"is {self.embedding.backend!r}; it must be one of {', '.join(EMBEDDING_BACKENDS)}")
        if not self.embedding.model.strip():
            raise bad("embedding.model", "is empty")
        for key in ("cpu_factor", "wall_factor", "min_wall_s", "min_cpu_s"):
            if getattr(self.guards, key) < 0:
                raise bad(f"guards.{key}", "must be 0 or more")


_SECTIONS = {
    "llm": LLMConfig,
    "loop": LoopConfig,
    "sampling": SamplingConfig,
    "executor": ExecutorConfig,
    "data": DataConfig,
    "embedding": EmbeddingConfig,
    "guards": GuardsConfig,
}


def config_from_dict(data: dict[str, Any], source: str = CONFIG_NAME) -> LabConfig:
    """Build and validate a :class:`LabConfig` from parsed TOML; unknown sections or keys and
    values of the wrong type raise :class:`ConfigError` naming them. Missing keys take defaults."""
    cfg = LabConfig()
    for section, value in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}] (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {section} must be a [{section}] table")
        target = getattr(cfg, section)
        types = {f.name: f for f in dataclasses.fields(target)}
        for key, v in value.items():
            if key not in types:
                raise ConfigError(
                    f"{source}: [{section}] has an unknown key {key!r} (known: {', '.join(types)})"
                )
            default = getattr(target, key)
            setattr(target, key, _coerce(v, default, f"[{section}] {key}", source))
    cfg.validate(source)
    return cfg


def _coerce(v: Any, default: Any, key: str, source: str) -> Any:
    if isinstance(default, bool):
        if isinstance(v, bool):
            return v
    elif isinstance(default, int):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif isinstance(default, float):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    elif isinstance(default, str):
        if isinstance(v, str):
            return v
    elif isinstance(default, list):
        if isinstance(v, list):
            return list(v)
    else:
        return v
    raise ConfigError(f"{source}: {key} is {v!r}; expected a {type(default).__name__}")


def load_config(path: str | os.PathLike[str]) -> LabConfig:
    """Read and validate ``asiarch.toml`` at ``path``; :class:`ConfigError` if it is missing,
    not TOML, or has a bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found (create a lab with `asiarch-tui init`)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(data, str(path))


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(v)


_TEMPLATE = """\
# asiarch lab configuration. Every setting is listed with its meaning; edit and restart.
# Unknown keys are errors (so a typo is caught), missing keys take the defaults shown here.

[llm]
# Backend of each agent role: "builtin" (the evolutionary researcher and rule-based analyst,
# judge and debugger; no LLM needed), "ollama" (a local Ollama server), or "openai" (any
# OpenAI-compatible server at openai_base_url). A step the model cannot answer (server
# unreachable, reply unusable after one correction) is answered by the built-in agent.
researcher = {llm.researcher}
analyst = {llm.analyst}
judge = {llm.judge}
debugger = {llm.debugger}
# Model names used by the ollama / openai backends for each role.
researcher_model = {llm.researcher_model}
analyst_model = {llm.analyst_model}
judge_model = {llm.judge_model}
debugger_model = {llm.debugger_model}
# Where the Ollama server listens.
ollama_host = {llm.ollama_host}
# Base URL of an OpenAI-compatible server (vLLM, llama.cpp server, ...).
openai_base_url = {llm.openai_base_url}
# The server's context window in tokens; 0 asks the server (llama.cpp's /props, Ollama's
# num_ctx) and assumes 2048 (llama.cpp's default) when it does not say. Prompts are fitted into
# it with room for the reply (the least important sections are dropped first).
context_length = {llm.context_length}
# Reply limits in tokens per role (0 = from the role's reply schema: 1536 when it carries code).
researcher_max_tokens = {llm.researcher_max_tokens}
analyst_max_tokens = {llm.analyst_max_tokens}
judge_max_tokens = {llm.judge_max_tokens}
debugger_max_tokens = {llm.debugger_max_tokens}
# Sampling temperature of a first answer, and of the one correction round after an unusable
# reply (different, so that the retry does not repeat the same reply).
temperature = {llm.temperature}
correction_temperature = {llm.correction_temperature}
# Wall-clock limit of one call in seconds, token stream included (0 = the request timeout).
call_timeout_s = {llm.call_timeout_s}
# After this many consecutive failures of a role, its built-in agent answers for
# breaker_minutes; then the server is tried again.
breaker_failures = {llm.breaker_failures}
breaker_minutes = {llm.breaker_minutes}

[loop]
# "autonomous" runs experiments back to back; "supervised" waits for approve / reject / edit
# of each checked proposal before it is evaluated.
mode = {loop.mode}
# Evaluation scale: "demo" (a reduced probe suite, under a minute per experiment on CPU; the
# default of a new lab), "probe" (the full synthetic probe suite, about a minute of CPU time),
# "explore" (probes plus byte-level LM training, minutes on CPU), "verify" (GPU, larger models
# and lm-eval tasks). Every scale does a fixed amount of work: wall time is never a budget.
scale = {loop.scale}
# Stop after this many experiments (0 = no limit).
experiments = {loop.experiments}
# Stop after this many hours of wall time (0 = no limit).
hours = {loop.hours}
# A proposal whose motivation has cosine similarity >= this with an earlier one is sent back
# as not novel. Measured with all-MiniLM-L6-v2 (archive/calibration.py): light rewordings of
# one motivation 0.89-0.98, the same idea said quite differently 0.37-0.78, different ideas
# about mixers 0.01-0.68 (95% below 0.47). 0.80 catches resubmissions and spares new ideas.
novelty_threshold = {loop.novelty_threshold}
# How many times a non-novel proposal is sent back before it is skipped.
novelty_rounds = {loop.novelty_rounds}
# How many repair rounds the debugger gets for a failing check or training error.
debug_rounds = {loop.debug_rounds}
# Random seed of the loop (sampling, builtin researcher, training).
seed = {loop.seed}
# Seeds per design that may enter the top (and for the seed design and the reference
# baselines): seed, seed+1, ... Every candidate is first trained on one seed; one whose one-seed
# result would enter the top top_k_seeds designs is re-evaluated on the others, and `best` moves
# only when the promotion rule says it is better beyond noise (docs/NOISE.md). 1 = no intervals.
seeds = {loop.seeds}
top_k_seeds = {loop.top_k_seeds}
# At scales with language-model training, a candidate's first-seed run is stopped at its
# half-way checkpoint when its training loss there is more than early_stop_spreads of the seed
# design's seed-to-seed standard deviations above the seed's at the same step (decided by the
# sandbox harness; status stopped_early: partial, no fitness, never promoted).
early_stop = {loop.early_stop}
early_stop_spreads = {loop.early_stop_spreads}

[sampling]
# Parents are drawn (rank-weighted) from the top_k accepted experiments by fitness.
top_k = {sampling.top_k}
# References are drawn from these ranks of the candidate set, [first, last] inclusive.
reference_ranks = {sampling.reference_ranks}
# How many references the researcher gets.
n_references = {sampling.n_references}

[executor]
# "local" runs evaluations in child processes on this machine; "ray" sends them to a cluster as
# Ray tasks (the sandbox still applies inside each task; needs `pip install "asiarch[cluster]"`).
kind = {executor.kind}
# Address of the Ray cluster (used when kind = "ray"): "auto" finds a running cluster (started
# with `ray start --head`), "host:port" or "ray://host:10001" names one, "local" starts Ray here.
ray_address = {executor.ray_address}
# Resources requested per evaluation task (ray).
cpus_per_task = {executor.cpus_per_task}
gpus_per_task = {executor.gpus_per_task}
# How many experiments may be in flight at once: sampling, research and novelty stay
# sequential, checks and evaluations run in parallel, results are committed as they finish.
concurrency = {executor.concurrency}
# Candidate code runs in an OS sandbox (bubblewrap). Where bubblewrap is missing, LLM-written
# candidates are refused; true runs them anyway with rlimits and an in-process guard only (no
# OS boundary: only for code you trust). The built-in researcher's designs always run.
unsafe_no_sandbox = {executor.unsafe_no_sandbox}

[data]
# Training text files for the explore / verify scales; empty = the shipped Shakespeare corpus.
corpus = {data.corpus}

[embedding]
# Text embedder for the novelty index and the cognition base: "fastembed" (a local ONNX model,
# offline) or "ollama" (an embedding model served by Ollama at [llm] ollama_host).
backend = {embedding.backend}
# Model: for fastembed, "all-MiniLM-L6-v2" (shipped by the installer); for ollama, the
# model name (e.g. "nomic-embed-text"). Changing it rebuilds the novelty index.
model = {embedding.model}

[guards]
# Evaluations run a fixed number of steps; two guards may end one early, keeping the metrics
# reached so far (marked partial; a partial run gets no fitness).
# too_slow: the evaluation used more than cpu_factor x the seed's CPU seconds at this scale (and
# more than min_cpu_s). CPU seconds hardly change when the machine is busy. 0 = no cap.
cpu_factor = {guards.cpu_factor}
min_cpu_s = {guards.min_cpu_s}
# hung: more than max(min_wall_s, wall_factor x the seed's wall seconds) of wall time passed.
wall_factor = {guards.wall_factor}
min_wall_s = {guards.min_wall_s}
"""


class _Fmt:
    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> str:
        return _toml(getattr(self._obj, name))


def render_config(cfg: LabConfig) -> str:
    """The commented ``asiarch.toml`` text holding ``cfg``'s values."""
    return _TEMPLATE.format(**{name: _Fmt(getattr(cfg, name)) for name in _SECTIONS})


def write_config(path: str | os.PathLike[str], cfg: LabConfig) -> None:
    """Write ``cfg`` to ``path`` atomically (temporary file, then rename)."""
    cfg.validate(str(path))
    atomic_write_text(Path(path), render_config(cfg))


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that a kill at any instant leaves the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str, fsync: bool = False) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
