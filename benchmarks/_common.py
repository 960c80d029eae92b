"""Shared by the benchmarks: the machine facts and the one-line JSON record of ``--json``.

Every benchmark in this folder accepts ``--json``. With it, the human-readable report goes to
stderr and stdout carries exactly one JSON line::

    {"benchmark": "ops_throughput", "utc": "...", "machine": {...}, "settings": {...}, "figures": {...}}

``machine`` holds what makes figures comparable over time: CPU model, logical CPUs, torch's
intra-op threads, torch and Python versions, the 1/5/15-minute load averages (at the start and at
the end of the run) and the git commit of the tree. ``scripts/bench.py`` (``make bench``) appends
these lines to ``benchmarks/results/<benchmark>.jsonl`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import enum
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_facts() -> dict[str, Any]:
    """CPU model, CPU count, torch threads/version, Python version, load average, git commit.

    torch is imported only when the benchmark has imported it already (``torch_threads`` is then
    its current intra-op thread count); its version comes from the package metadata either way.
    """
    try:
        torch_version: str | None = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    torch_mod = sys.modules.get("torch")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch_mod.get_num_threads() if torch_mod is not None else None,
        "torch_version": torch_version,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average": load,
        "git_commit": _git_commit(),
    }


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``: the report goes to stderr, one JSON line to stdout."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line (figures + machine facts) on stdout; the report goes to stderr",
    )


class JsonRecord:
    """Collects a benchmark's settings and figures; :func:`json_output` prints it as one line."""

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.settings: dict[str, Any] = {}
        self.figures: dict[str, Any] = {}
        self.load_at_start = machine_facts()["load_average"]

    def line(self) -> str:
        """The JSON line: benchmark name, UTC time, machine facts, settings and figures."""
        machine = machine_facts()
        machine["load_average_at_start"] = self.load_at_start
        record = {
            "benchmark": self.benchmark,
            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine,
            "settings": self.settings,
            "figures": self.figures,
        }
        return json.dumps(_finite(record), default=_jsonable, allow_nan=False)


def _finite(x: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    if isinstance(x, enum.Enum):
        return x.value
    return str(x)


@contextlib.contextmanager
def json_output(benchmark: str, enabled: bool) -> Iterator[JsonRecord]:
    """``with json_output("name", args.json) as rec: ...; rec.figures[...] = ...``.

    When ``enabled``, everything printed inside the block goes to stderr, and at the end (also
    after an exception, with ``"error"`` in the figures) one JSON line goes to the real stdout.
    """
    rec = JsonRecord(benchmark)
    if not enabled:
        yield rec
        return
    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield rec
    except BaseException as exc:
        rec.figures.setdefault("error", f"{type(exc).__name__}: {exc}")
        print(rec.line(), file=stdout, flush=True)
        raise
    print(rec.line(), file=stdout, flush=True)
