"""The crash journal: each experiment in flight has ``lab/runs/<id>/state.json`` (its id,
parent, references, and once researched its proposal and transcript). A loop started after a
kill finds it (:func:`in_flight`: its id not yet in the archive) and redoes that experiment
with the same id; the file goes when the experiment is committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection

__all__ = ["runs_dir", "save_state", "in_flight", "clear_state"]


def runs_dir(lab_path: Path) -> Path:
    """``lab/runs`` (created)."""
    p = Path(lab_path) / "runs"
    p.mkdir(parents=True, exist_ok=True)
    return p


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``run_dir/state.json`` atomically."""
    from archive.config import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "state.json", json.dumps(state, indent=1, default=str))


def clear_state(run_dir: Path) -> None:
    """Drop ``run_dir/state.json`` (the experiment is committed)."""
    (run_dir / "state.json").unlink(missing_ok=True)


def in_flight(runs: Path, store: Any, reserved: Collection[str]) -> dict[str, Any] | None:
    """The saved state of an experiment that was started but never committed, if any (not one
    in ``reserved``: being run by another worker). States of committed ids are removed."""
    found = []
    for st in sorted(runs.glob("*/state.json")):
        try:
            state = json.loads(st.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        exp_id = state.get("id")
        if not exp_id:
            continue
        if exp_id in store:
            st.unlink(missing_ok=True)  # committed before the kill: nothing to redo
            continue
        if exp_id in reserved:  # being run by another worker
            continue
        found.append(state)
    return found[0] if found else None
