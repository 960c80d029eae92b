"""The experiment record: everything about one experiment, as stored in one archive commit.

The whole record is kept as ``record.json`` in the experiment's commit; ``mixer.py``,
``motivation.md``, ``analysis.md``, ``metrics.json`` and ``train.log`` repeat its main parts as
plain files so that ``git show`` and diffs between experiments read naturally.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

#: The statuses an experiment can have; all of them are committed, so nothing tried is lost.
#: ``too_slow``: evaluated, but over the efficiency cap (a finding about the design's cost).
#: ``stopped_early``: its language-model run was stopped at the half-way checkpoint, behind the
#: seed by more than the seed's spread (a rung of the evaluation, not a failure; partial metrics).
STATUSES = ("accepted", "failed", "rejected", "too_slow", "stopped_early")

#: The seed experiment's id.
SEED_ID = "0000"


class RecordError(ValueError):
    """A record that cannot be stored (bad id, status, fitness...)."""


def slugify(name: str, max_len: int = 40) -> str:
    """A short lowercase ``a-z0-9-`` form of ``name`` for tag names (``exp/<id>-<slug>``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "experiment"


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds (``2026-11-25T14:40:13Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_id(n: int) -> str:
    """Experiment number ``n`` as an id: at least 4 digits, zero-padded (``7 -> "0007"``)."""
    return f"{n:04d}"


@dataclass
class ExperimentRecord:
    """One experiment (see docs/CONTRACTS.md, "archive").

    ``metrics`` is the evaluation dict of ``training.evaluate.evaluate_file`` (empty when the
    experiment was never evaluated, e.g. the seed of a new lab before the loop first measures
    it, or a proposal rejected before evaluation); ``fitness`` is then ``None``. Fitness is
    derived data: ``yardstick`` is the version (a hash of the seed's metrics and scale) it was
    computed against, and ``archive.scores`` holds re-scored values when the yardstick changed.
    Failed, too_slow, stopped_early and rejected experiments, and partial metrics, have no
    fitness (None).
    """

    id: str
    name: str
    slug: str = ""
    parent: str | None = None
    references: list[str] = field(default_factory=list)
    status: str = "accepted"
    motivation: str = ""
    code: str = ""
    analysis: str = ""
    problem: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    fitness: float | None = None
    fitness_components: dict[str, Any] = field(default_factory=dict)
    yardstick: str = ""
    scale: str = ""
    researcher: str = "builtin"
    created: str = field(default_factory=utc_now)
    seed: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    genome: dict[str, Any] | None = None
    #: the 90% t interval ``[lo, hi]`` of the fitness over the design's seeds (None: one seed)
    fitness_interval: list[float] | None = None
    #: ``{seed: fitness}`` of each seed the design was evaluated on (keys are strings in JSON)
    fitness_seeds: dict[str, float] = field(default_factory=dict)
    #: how ``best`` moved on this record: ``{promoted, outcome, rule, text, incumbent}``
    promotion: dict[str, Any] = field(default_factory=dict)
    #: everything needed to re-run the evaluation (scale definition, code version, lab config,
    #: threads, device, dtype, data hash, seeds); see ``agents.repro.environment``
    reproduce: dict[str, Any] = field(default_factory=dict)
    operators: list[str] = field(default_factory=list)
    cognition: list[str] = field(default_factory=list)
    train_log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.slug:
            self.slug = slugify(self.name)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (deep copy)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentRecord":
        """Build a record from :meth:`to_dict` output; unknown keys go to ``extra`` (so a newer
        record read by an older version keeps them), missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        unknown = {k: v for k, v in data.items() if k not in names}
        if "id" not in known or "name" not in known:
            raise RecordError("an experiment record needs at least 'id' and 'name'")
        rec = cls(**known)
        if unknown:
            rec.extra = {**rec.extra, **{"_unknown": unknown}}
        return rec

    # -- checks --------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`RecordError` with a clear message if the record cannot be committed."""
        if not re.fullmatch(r"\d{4,}", str(self.id)):
            raise RecordError(f"experiment id {self.id!r} is not a number of at least 4 digits")
        if self.status not in STATUSES:
            raise RecordError(
                f"experiment {self.id}: status {self.status!r} is not one of {', '.join(STATUSES)}"
            )
        if not self.name.strip():
            raise RecordError(f"experiment {self.id}: the name is empty")
        if self.parent is not None and not re.fullmatch(r"\d{4,}", str(self.parent)):
            raise RecordError(f"experiment {self.id}: parent {self.parent!r} is not an experiment id")
        if self.parent == self.id:
            raise RecordError(f"experiment {self.id} cannot be its own parent")
        for ref in self.references:
            if not re.fullmatch(r"\d{4,}", str(ref)):
                raise RecordError(f"experiment {self.id}: reference {ref!r} is not an experiment id")
        if self.fitness is not None:
            if not isinstance(self.fitness, (int, float)) or not math.isfinite(self.fitness):
                raise RecordError(f"experiment {self.id}: fitness {self.fitness!r} is not a finite number")
        if self.fitness_interval is not None:
            fi = self.fitness_interval
            if (not isinstance(fi, (list, tuple)) or len(fi) != 2
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in fi) or fi[0] > fi[1]):
                raise RecordError(f"experiment {self.id}: fitness_interval {fi!r} is not [lo, hi] with lo <= hi")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", self.slug):
            raise RecordError(f"experiment {self.id}: slug {self.slug!r} is not lowercase a-z0-9-")

    # -- derived -------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        """The git tag name of this experiment: ``exp/<id>-<slug>``."""
        return f"exp/{self.id}-{self.slug}"

    def summary_line(self, width: int = 72) -> str:
        """``<name>: <one line>`` for the commit subject (first sentence of the motivation)."""
        first = ""
        for line in self.motivation.splitlines():
            if line.strip():
                first = line.strip().lstrip("#").strip()
                break
        if first.lower().startswith(self.name.lower()):
            first = first[len(self.name):].lstrip(" :-—")
        subject = f"{self.name}: {first}" if first else self.name
        subject = " ".join(subject.split())
        if len(subject) > width:
            subject = subject[: width - 1].rstrip() + "…"
        return subject


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few metrics the UI lists and sampling uses (a small dict, all JSON scalars)."""
    keys = ("val_loss", "val_bpb", "train_loss", "probe_mean", "probe_mean_partial", "probes_done",
            "probes_total", "partial", "tokens_per_s", "train_seconds", "cpu_seconds", "wall_seconds",
            "throughput_vs_seed", "params", "mixer_params", "status", "stop_reason", "n_seeds")
    out = {k: metrics[k] for k in keys if k in metrics and _scalar(metrics[k])}
    probes = metrics.get("probes")
    if isinstance(probes, dict):
        out["probes"] = {k: v for k, v in probes.items() if _scalar(v)}
    spread = metrics.get("spread")
    if isinstance(spread, dict):  # per-metric std over seeds (multi-seed designs)
        out["std"] = {k: v.get("std") for k, v in spread.items()
                      if isinstance(v, dict) and _scalar(v.get("std")) and "." not in k}
    return out


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))
