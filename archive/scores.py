"""Fitness as derived data: ``lab/scores.json``, the fitness of every experiment re-scored
against the current yardstick.

An experiment's commit keeps the metrics it measured and the fitness computed at commit time
against the yardstick of the day (the seed's metrics at the lab's scale; its version is a hash
of them). When the yardstick changes (the seed re-measured, another scale, a new fitness
formula) every experiment is re-scored from its metrics (``asiarch-tui reindex``, or the loop
when it sees a new yardstick) and the new figures are written here; the index, the candidate
set and the ``best`` tag read them in place of the committed ones. Like the index, the file is
derived: deleting it falls back to the committed fitness until the next re-score.

This module stores and applies scores; computing them is the agents' job
(``agents.yardstick``), so the archive needs no knowledge of the fitness formula.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from archive.config import atomic_write_text

SCORES_NAME = "scores.json"


class ScoreBook:
    """The re-scored fitness of each experiment (``{"yardstick": version, "scores": {id:
    {"fitness", "fitness_components", "yardstick"}}}``). Reads are from memory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mutex = threading.RLock()
        self._data: dict[str, Any] = {"yardstick": None, "scores": {}}
        self.load()

    def load(self) -> None:
        """(Re)read the file; a missing or damaged file is an empty book (it is derived)."""
        with self._mutex:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
            if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
                data = {"yardstick": None, "scores": {}}
            self._data = data

    @property
    def yardstick(self) -> str | None:
        """The version of the yardstick the book was scored against (None: never re-scored)."""
        return self._data.get("yardstick")

    def get(self, exp_id: str) -> dict[str, Any] | None:
        """``{"fitness", "fitness_components", "yardstick"}`` of ``exp_id``, or None when the
        experiment was not re-scored (its committed fitness stands)."""
        with self._mutex:
            s = self._data["scores"].get(str(exp_id))
            return dict(s) if isinstance(s, dict) else None

    def fitness(self, exp_id: str, committed: float | None) -> float | None:
        """The current fitness of ``exp_id``: the re-scored one, else ``committed``."""
        s = self.get(exp_id)
        return committed if s is None else s.get("fitness")

    def promotion(self, exp_id: str, committed: str | None) -> str | None:
        """The current promotion outcome of ``exp_id``: the re-decided one when it was
        re-scored (None for a record from before the promotion rule), else ``committed``."""
        s = self.get(exp_id)
        if s is None:
            return committed
        return (s.get("fitness_components") or {}).get("promotion")

    def replace(self, yardstick: str | None, scores: dict[str, dict[str, Any]]) -> None:
        """Replace the whole book (atomic write)."""
        clean = {str(k): {"fitness": v.get("fitness"), "fitness_components": v.get("fitness_components") or {},
                          "yardstick": v.get("yardstick", yardstick)} for k, v in scores.items()}
        with self._mutex:
            self._data = {"yardstick": yardstick, "scores": clean}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self._data, indent=1, sort_keys=True, default=str))

    def overlay(self, doc: dict[str, Any]) -> dict[str, Any]:
        """An index document with the re-scored fitness (if any) in place of the committed."""
        s = self.get(doc.get("id", ""))
        if s is None:
            return doc
        comps = s.get("fitness_components") or {}
        out = {**doc, "fitness": s.get("fitness"), "fitness_components": comps, "yardstick": s.get("yardstick")}
        if "fitness_interval" in comps:  # multi-seed fields re-scored with the fitness
            out["fitness_interval"] = comps.get("fitness_interval")
            vals = [float(v) for v in (comps.get("fitness_seeds") or {}).values()]
            mean = sum(vals) / len(vals) if vals else 0.0
            out["fitness_std"] = (round((sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5, 6)
                                  if len(vals) >= 2 else None)
        if "promotion" in comps:
            out["promotion"] = comps.get("promotion")
        return out

    def __len__(self) -> int:
        return len(self._data["scores"])
