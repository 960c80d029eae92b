"""The two guards of an evaluation: an efficiency cap in CPU seconds and a hang guard in wall time.

Evaluations run a fixed amount of work (steps and tokens per scale); wall time is never a
budget, because it depends on what else the machine is doing. Two guards remain:

- **too_slow**: the evaluating process has used more than ``cpu_factor`` times the CPU seconds
  the seed mixer needed for the whole evaluation at the same scale (measured in this lab). CPU
  seconds barely move when other processes compete for the cores, so this is a finding about
  the design (its cost), not about the machine.
- **hung**: more than ``wall_factor`` times the seed's wall time (at least ``min_wall_s``) has
  passed. Generous on purpose: it only catches a run that makes no progress.

:class:`Guards` is plain data with a pure :meth:`Guards.check` (``cpu_s, wall_s -> status``), so
the same decision can be taken in the evaluating process (from ``time.process_time()``) or by
a supervising process that reads the child's CPU time from the kernel.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Guards", "GuardSettings", "TOO_SLOW", "HUNG", "GUARD_STATUSES", "cpu_clock", "wall_clock",
           "load_average", "seed_reference"]

TOO_SLOW = "too_slow"
HUNG = "hung"
#: Statuses a guard can end an evaluation with.
GUARD_STATUSES = (TOO_SLOW, HUNG)


def cpu_clock() -> float:
    """CPU seconds (user + system, all threads) of this process so far."""
    return time.process_time()


def wall_clock() -> float:
    """A monotonic wall clock in seconds."""
    return time.perf_counter()


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


_SETTING_FIELDS = ("cpu_factor", "wall_factor", "min_wall_s", "min_cpu_s")


@dataclass(frozen=True)
class GuardSettings:
    """The configurable factors (``[guards]`` in ``asiarch.toml``).

    ``cpu_factor``: a design may use this many times the seed's CPU seconds (0: no cap), and
    at least ``min_cpu_s`` (so that a seed measured in a fraction of a second, as in smoke
    runs, does not make start-up jitter a verdict); ``wall_factor`` / ``min_wall_s``: the hang
    guard is ``max(min_wall_s, wall_factor x the seed's wall seconds)``."""

    cpu_factor: float = 8.0
    wall_factor: float = 20.0
    min_wall_s: float = 600.0
    min_cpu_s: float = 10.0

    def __post_init__(self) -> None:
        for name in _SETTING_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"guards: {name} must be a number >= 0, got {v!r}")

    @classmethod
    def from_any(cls, value: Any) -> "GuardSettings":
        """From a GuardSettings, a dict with (some of) the fields, an object with those
        attributes (e.g. the lab config's ``guards`` section) or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**{k: float(v) for k, v in value.items() if k in _SETTING_FIELDS})
        return cls(**{k: float(getattr(value, k)) for k in _SETTING_FIELDS if hasattr(value, k)})


def seed_reference(seed_metrics: dict[str, Any] | None, scale_name: str | None = None) -> dict[str, float] | None:
    """``{"cpu_s", "wall_s"}`` of a complete (``ok``, not partial) seed evaluation, else None.
    With ``scale_name``, a measurement at another scale does not count."""
    m = seed_metrics or {}
    if m.get("status") != "ok" or m.get("partial"):
        return None
    if scale_name is not None and m.get("scale") not in (None, scale_name):
        return None
    cpu, wall = m.get("cpu_seconds"), m.get("wall_seconds")
    if not _positive(cpu) or not _positive(wall):
        return None
    return {"cpu_s": float(cpu), "wall_s": float(wall)}


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@dataclass(frozen=True)
class Guards:
    """The limits of one evaluation, in seconds measured from its start.

    ``cpu_limit_s``: status ``too_slow`` above it (None: no efficiency cap, e.g. when the seed
    itself is measured); ``wall_limit_s``: status ``hung`` above it (None: no hang guard);
    ``seed_cpu_s`` / ``seed_wall_s``: the seed's figures they were derived from (None when
    unmeasured), used for the relative throughput."""

    cpu_limit_s: float | None = None
    wall_limit_s: float | None = None
    seed_cpu_s: float | None = None
    seed_wall_s: float | None = None

    @classmethod
    def relative_to(cls, seed_metrics: dict[str, Any] | None, settings: Any = None,
                    expected_s: float | None = None, scale_name: str | None = None) -> "Guards":
        """Guards for a design evaluated against ``seed_metrics`` (the seed's complete metrics
        at the same scale) under ``settings`` (:class:`GuardSettings` or its dict).

        Without a usable seed measurement there is no efficiency cap, and the hang guard is
        ``max(min_wall_s, wall_factor x expected_s)`` (``expected_s``: the scale's rough
        estimate of one evaluation; None: ``min_wall_s``)."""
        s = GuardSettings.from_any(settings)
        ref = seed_reference(seed_metrics, scale_name)
        if ref is None:
            base = float(expected_s) if _positive(expected_s) else 0.0
            wall = max(s.min_wall_s, s.wall_factor * base) if (s.min_wall_s or base) else None
            return cls(cpu_limit_s=None, wall_limit_s=wall or None)
        cpu = max(s.min_cpu_s, s.cpu_factor * ref["cpu_s"]) if s.cpu_factor > 0 else None
        wall = max(s.min_wall_s, s.wall_factor * ref["wall_s"]) if (s.wall_factor > 0 or s.min_wall_s > 0) else None
        return cls(cpu_limit_s=cpu, wall_limit_s=wall or None, seed_cpu_s=ref["cpu_s"], seed_wall_s=ref["wall_s"])

    def check(self, cpu_s: float, wall_s: float) -> str | None:
        """``"hung"``, ``"too_slow"`` or None for a run that has used ``cpu_s`` CPU seconds and
        ``wall_s`` wall seconds since it started. The hang guard wins when both apply."""
        if self.wall_limit_s is not None and wall_s > self.wall_limit_s:
            return HUNG
        if self.cpu_limit_s is not None and cpu_s > self.cpu_limit_s:
            return TOO_SLOW
        return None

    def reason(self, status: str, cpu_s: float, wall_s: float, where: str = "") -> str:
        """One line saying why ``status`` (from :meth:`check`) ended the run."""
        at = f" {where}" if where else ""
        if status == HUNG:
            return (f"hang guard: {wall_s:.0f} s wall time{at} exceeds {self.wall_limit_s:.0f} s"
                    + (f" (from the seed's {self.seed_wall_s:.0f} s)" if self.seed_wall_s else ""))
        if status == TOO_SLOW:
            factor = (self.cpu_limit_s / self.seed_cpu_s) if self.seed_cpu_s else None
            return (f"too slow: {cpu_s:.0f} CPU s{at} exceeds {self.cpu_limit_s:.0f} CPU s"
                    + (f" ({factor:g}x the seed's {self.seed_cpu_s:.0f} CPU s)" if factor else ""))
        return status

    def relative_throughput(self, fraction_done: float, cpu_s: float) -> float | None:
        """Work per CPU second relative to the seed's (1.0: as fast as the seed; 0.1: ten times
        slower), from the fraction of the evaluation's work done in ``cpu_s``; None unmeasured."""
        if not self.seed_cpu_s or cpu_s <= 0:
            return None
        return round(max(0.0, fraction_done) * self.seed_cpu_s / cpu_s, 4)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (payload of a sandboxed evaluation; recorded in metrics.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Guards":
        """Inverse of :meth:`to_dict` (None or {}: no guards)."""
        d = d or {}
        vals = {k: (None if d.get(k) is None else float(d[k])) for k in
                ("cpu_limit_s", "wall_limit_s", "seed_cpu_s", "seed_wall_s")}
        return cls(**vals)
