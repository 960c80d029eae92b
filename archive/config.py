"""The lab's configuration: ``asiarch.toml``.

:class:`LabConfig` holds every setting, a pydantic model per section whose fields carry their
types, ranges and defaults; :func:`load_config` reads and validates the file (an error names each
bad key by its path), :func:`render_config` / :func:`write_config` write it from a commented template so
that each setting is documented in the file itself.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

CONFIG_NAME = "asiarch.toml"

Backend = Literal["builtin", "ollama", "openai"]
Mode = Literal["autonomous", "supervised"]
ScaleName = Literal["demo", "probe", "explore", "verify"]
ExecutorKind = Literal["local", "ray"]
EmbeddingBackend = Literal["fastembed", "ollama"]

ROLES = ("researcher", "analyst", "judge", "debugger")
BACKENDS: tuple[str, ...] = get_args(Backend)
MODES: tuple[str, ...] = get_args(Mode)
SCALES: tuple[str, ...] = get_args(ScaleName)
EXECUTORS: tuple[str, ...] = get_args(ExecutorKind)
EMBEDDING_BACKENDS: tuple[str, ...] = get_args(EmbeddingBackend)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and each bad key
    by its path (``asiarch.toml: loop.seeds: Input should be greater than or equal to 1 (got 0)``)."""


class _Section(BaseModel):
    """A section of ``asiarch.toml``: unknown keys are errors (a typo is caught), a value must
    have the key's type as TOML parsed it (a quoted number is no number; an integer is a valid
    float), and an assignment is checked like a value read from the file."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class LLMConfig(_Section):
    """[llm]: which backend and model each agent role uses."""

    researcher: Backend = "builtin"
    analyst: Backend = "builtin"
    judge: Backend = "builtin"
    debugger: Backend = "builtin"
    researcher_model: str = "qwen3:8b"
    analyst_model: str = "qwen3:8b"
    judge_model: str = "qwen3:8b"
    debugger_model: str = "qwen3:8b"
    ollama_host: str = "http://127.0.0.1:11434"
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    #: the server's context in tokens (0: ask the server; llama.cpp's default 2048 if it does not say)
    context_length: int = Field(0, ge=0)
    #: reply limits per role in tokens (0: from the role's reply schema: 1536 with code, less without)
    researcher_max_tokens: int = Field(0, ge=0)
    analyst_max_tokens: int = Field(0, ge=0)
    judge_max_tokens: int = Field(0, ge=0)
    debugger_max_tokens: int = Field(0, ge=0)
    #: sampling temperature of a first answer and of its correction round (kept different)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    correction_temperature: float = Field(0.2, ge=0.0, le=2.0)
    #: wall-clock limit of one call in seconds, streaming included (0: the request timeout)
    call_timeout_s: float = Field(0.0, ge=0.0)
    #: consecutive failures of a role before its built-in agent takes over, and for how long
    breaker_failures: int = Field(3, ge=1)
    breaker_minutes: float = Field(10.0, ge=0.0)

    @field_validator("context_length")
    @classmethod
    def _context_length(cls, v: int) -> int:
        if 0 < v < 256:
            raise PydanticCustomError("context_length", "must be 0 (ask the server) or at least 256 tokens")
        return v


class LoopConfig(_Section):
    """[loop]: how the research loop runs."""

    mode: Mode = "autonomous"
    scale: ScaleName = "explore"
    experiments: int = Field(0, ge=0)
    hours: float = Field(0.0, ge=0.0)
    #: a cosine similarity in (0, 1]
    novelty_threshold: float = Field(0.80, gt=0.0, le=1.0)
    novelty_rounds: int = Field(3, ge=0)
    debug_rounds: int = Field(3, ge=0)
    seed: int = 0
    #: at least 1 (3 gives every design in the top an interval)
    seeds: int = Field(3, ge=1)
    top_k_seeds: int = Field(5, ge=1)
    #: end a candidate's first-seed LM run at its half-way checkpoint when its loss there is
    #: more than ``early_stop_spreads`` of the seed's seed-to-seed standard deviations above the
    #: seed's (status ``stopped_early``; training.early_stop, docs/NOISE.md)
    early_stop: bool = True
    early_stop_spreads: float = Field(1.0, ge=0.0)


class SamplingConfig(_Section):
    """[sampling]: the candidate set (docs/ARCHITECTURE.md step 1)."""

    top_k: int = Field(10, ge=1)
    reference_ranks: list[int] = Field(default_factory=lambda: [11, 50])
    n_references: int = Field(4, ge=0)

    @field_validator("reference_ranks")
    @classmethod
    def _ranks(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or v[0] < 1 or v[1] < v[0]:
            raise PydanticCustomError("reference_ranks", "must be [first, last] with 1 <= first <= last")
        return v


class ExecutorConfig(_Section):
    """[executor]: where evaluations run."""

    kind: ExecutorKind = "local"
    ray_address: str = "auto"
    cpus_per_task: float = Field(1.0, gt=0.0)
    gpus_per_task: float = Field(0.0, ge=0.0)
    concurrency: int = Field(1, ge=1)
    #: run untrusted candidates without the OS sandbox (bubblewrap) where it is unavailable
    unsafe_no_sandbox: bool = False


class DataConfig(_Section):
    """[data]: training corpus files."""

    corpus: list[str] = Field(default_factory=list)


class EmbeddingConfig(_Section):
    """[embedding]: the text embedder used by the novelty index and the cognition base."""

    backend: EmbeddingBackend = "fastembed"
    model: str = "all-MiniLM-L6-v2"

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise PydanticCustomError("empty", "is empty")
        return v


class GuardsConfig(_Section):
    """[guards]: when an evaluation is ended early (training.guards; wall time is no budget)."""

    cpu_factor: float = Field(8.0, ge=0.0)
    wall_factor: float = Field(20.0, ge=0.0)
    min_wall_s: float = Field(600.0, ge=0.0)
    min_cpu_s: float = Field(10.0, ge=0.0)


class LabConfig(_Section):
    """Every setting of a lab (the parsed ``asiarch.toml``)."""

    llm: LLMConfig = Field(default_factory=LLMConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, section by section."""
        return self.model_dump()

    def validate(self, source: str = CONFIG_NAME) -> None:  # type: ignore[override]
        """Check the settings as they are now (a section may have been replaced whole);
        :class:`ConfigError` naming every bad key."""
        config_from_dict(self.model_dump(), source)


_SECTIONS: dict[str, type[_Section]] = {
    name: info.annotation for name, info in LabConfig.model_fields.items()  # type: ignore[misc]
}


def _message(err: dict[str, Any]) -> str:
    """One pydantic error as ``section.key: what is wrong (got value)``."""
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown section [{path}] (known: {', '.join(_SECTIONS)})"
        known = _SECTIONS[str(loc[0])].model_fields if str(loc[0]) in _SECTIONS else {}
        return f"{path}: unknown key (known: {', '.join(known)})"
    if err["type"] == "model_type" and len(loc) == 1:
        return f"{path} must be a [{path}] table"
    return f"{path}: {err['msg']} (got {err['input']!r})"


def config_from_dict(data: dict[str, Any], source: str = CONFIG_NAME) -> LabConfig:
    """Build and validate a :class:`LabConfig` from parsed TOML; unknown sections or keys and
    values of the wrong type or out of range raise :class:`ConfigError` naming each by its path.
    Missing keys take defaults."""
    try:
        return LabConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_message(e) for e in exc.errors())) from None


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
    """``v`` as a TOML value (tomli-w's escaping; a list stays on one line in the template)."""
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return tomli_w.dumps({"v": v}).split(" = ", 1)[1].rstrip("\n")


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
