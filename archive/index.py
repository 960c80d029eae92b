"""The experiment index (tinydb, ``lab/index.json``): one document per experiment with what the
UI and sampling need, derived from the archive and rebuilt from it at will.

Fields of a document: ``id, name, slug, tag, parent, references, status, fitness,
fitness_components, yardstick, fitness_interval, fitness_std, n_seeds, promotion (the promotion rule's
outcome), scale, metrics`` (a summary, see :func:`archive.record.metrics_summary`),
``summary`` (the commit subject), ``problem, researcher, measures`` (the id a re-measurement
measures: the seed's measurement says ``"0000"``), ``created, commit``. The document of
experiment ``N`` has tinydb doc_id ``N + 1``.

The file carries the archive state it was built from (``_meta`` table); :meth:`sync` compares it
with the archive and catches up (adding what is missing, dropping what git no longer has), or
rebuilds from scratch if the file is damaged. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import json
import functools
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import Storage
from tinydb.table import Document

from archive.config import atomic_write_text
from archive.record import ExperimentRecord, metrics_summary

INDEX_VERSION = 1


class IndexCorrupt(RuntimeError):
    """index.json cannot be parsed."""


class AtomicJSONStorage(Storage):
    """tinydb storage that replaces the file atomically on each write (sorted keys, so equal
    content gives equal bytes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise IndexCorrupt(f"{self.path} is damaged ({exc})") from None
        if not isinstance(data, dict):
            raise IndexCorrupt(f"{self.path} is not a tinydb file")
        return data

    def write(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(data, sort_keys=True, separators=(",", ":")))

    def close(self) -> None:
        pass


def n_seeds(record: ExperimentRecord) -> int:
    """How many seeds the record's design was evaluated on (0 when never evaluated)."""
    if record.fitness_seeds:
        return len(record.fitness_seeds)
    seeds = (record.metrics or {}).get("seeds")
    if isinstance(seeds, list) and seeds:
        return len(seeds)
    return 1 if record.metrics else 0


def fitness_std(record: ExperimentRecord) -> float | None:
    """The sample std of the per-seed fitness values (None for fewer than 2 seeds)."""
    vals = [float(v) for v in (record.fitness_seeds or {}).values() if isinstance(v, (int, float))]
    if len(vals) < 2:
        return None
    mean = sum(vals) / len(vals)
    return round((sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5, 6)


def make_doc(record: ExperimentRecord, commit: str) -> dict[str, Any]:
    """The index document of ``record`` committed as ``commit``."""
    return {
        "id": record.id,
        "name": record.name,
        "slug": record.slug,
        "tag": record.tag,
        "parent": record.parent,
        "references": list(record.references),
        "status": record.status,
        "fitness": record.fitness,
        "fitness_components": record.fitness_components,
        "fitness_interval": record.fitness_interval,
        "fitness_std": fitness_std(record),
        "n_seeds": n_seeds(record),
        "promotion": (record.promotion or {}).get("outcome"),
        "yardstick": record.yardstick,
        "scale": record.scale,
        "metrics": metrics_summary(record.metrics),
        "summary": record.summary_line(),
        "problem": record.problem,
        "researcher": record.researcher,
        # the id this record re-measures (the seed's measurement at the lab's scale), else None
        "measures": record.extra.get("measures"),
        "created": record.created,
        "commit": commit,
    }


def _locked(fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with self._mutex:
            return fn(self, *args, **kwargs)
    return wrapper


class ExperimentIndex:
    """The tinydb index of a lab. Reads are from memory; writes go to disk at once, or, with
    ``flush_interval`` > 0, at most that often (and on :meth:`flush` / :meth:`close`): a lost
    tail is caught up from git by the next :meth:`sync`."""

    def __init__(self, path: str | os.PathLike[str], flush_interval: float = 0.0,
                 overlay: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        #: ``doc -> doc`` applied to every document written (the lab's re-scored fitness)
        self.overlay = overlay
        self.flush_interval = flush_interval
        self._last_flush = 0.0
        self._dirty = False
        self.corrupt = False
        self._mutex = threading.RLock()  # tinydb is not thread-safe; the UI reads while the worker writes
        self._open()

    def _open(self) -> None:
        try:
            self._connect()
            self.table.all()
        except IndexCorrupt:
            # Keep the damaged file for inspection and start empty; sync() rebuilds from git.
            os.replace(self.path, self.path.with_name(self.path.name + ".damaged"))
            self.corrupt = True
            self._connect()

    def _connect(self) -> None:
        mw = CachingMiddleware(AtomicJSONStorage)
        mw.WRITE_CACHE_SIZE = 1 << 30  # we flush explicitly
        self.db = TinyDB(self.path, storage=mw)
        self.table = self.db.table("experiments")
        self.meta_table = self.db.table("_meta")

    # -- meta ----------------------------------------------------------------------------
    @_locked
    def meta(self) -> dict[str, Any]:
        """``{"state": ..., "version": ...}`` of the archive this index reflects."""
        doc = self.meta_table.get(doc_id=1)
        return dict(doc) if doc else {}

    def _set_state(self, state: str) -> None:
        self.meta_table.upsert(Document({"state": state, "version": INDEX_VERSION}, doc_id=1))

    # -- writing -------------------------------------------------------------------------
    @_locked
    def add(self, record: ExperimentRecord, commit: str, state: str | None = None) -> None:
        """Insert or replace ``record``'s document; ``state`` is the archive state after it."""
        self.table.upsert(Document(self._doc(record, commit), doc_id=int(record.id) + 1))
        if state is not None:
            self._set_state(state)
        self._dirty = True
        if self.flush_interval <= 0 or time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def _doc(self, record: ExperimentRecord, commit: str) -> dict[str, Any]:
        doc = make_doc(record, commit)
        return self.overlay(doc) if self.overlay is not None else doc

    @_locked
    def flush(self) -> None:
        """Write the index to disk if anything changed (atomic)."""
        if self._dirty:
            self.db.storage.flush()  # type: ignore[attr-defined]
        self._dirty = False
        self._last_flush = time.monotonic()

    @_locked
    def rebuild(self, store: Any, write: bool = True) -> int:
        """Drop everything and re-read every experiment from ``store`` (an ArchiveStore).
        Returns the number of documents."""
        self.corrupt = False
        self.db.drop_tables()
        self.table = self.db.table("experiments")
        self.meta_table = self.db.table("_meta")
        docs = [Document(self._doc(store.get(e.id), e.commit), doc_id=int(e.id) + 1) for e in store.entries()]
        if docs:
            self.table.insert_multiple(docs)
        self._set_state(store.state())
        self._dirty = True
        if write:
            self.flush()
        return len(docs)

    @_locked
    def sync(self, store: Any, write: bool = True) -> str:
        """Make the index match the archive. Returns ``"ok"`` (already in step), ``"updated"``
        (caught up incrementally) or ``"rebuilt"`` (the file was damaged or of another
        version)."""
        if self.corrupt or self.meta().get("version", INDEX_VERSION) != INDEX_VERSION:
            self.rebuild(store, write)
            return "rebuilt"
        state = store.state()
        if self.meta().get("state") == state and len(self.table) == len(store):
            return "ok"
        have = {d["id"]: d.get("commit") for d in self.table.all()}
        want = {e.id: e.commit for e in store.entries()}
        stale = [i for i, c in have.items() if want.get(i) != c]
        if stale:
            self.table.remove(doc_ids=[int(i) + 1 for i in stale])
        docs = [Document(self._doc(store.get(i), c), doc_id=int(i) + 1)
                for i, c in want.items() if have.get(i) != c]
        if docs:
            self.table.insert_multiple(docs)
        self._set_state(state)
        self._dirty = True
        if write:
            self.flush()
        return "updated"

    @_locked
    def close(self) -> None:
        """Flush and close."""
        self.flush()
        self.db.close()

    # -- reading -------------------------------------------------------------------------
    @_locked
    def get(self, exp_id: str) -> dict[str, Any] | None:
        """The document of ``exp_id``, or None."""
        doc = self.table.get(doc_id=int(exp_id) + 1)
        return dict(doc) if doc else None

    @_locked
    def all(self) -> list[dict[str, Any]]:
        """Every document, by id."""
        return sorted((dict(d) for d in self.table.all()), key=lambda d: int(d["id"]))

    @_locked
    def __len__(self) -> int:
        return len(self.table)

    @_locked
    def counts(self) -> dict[str, int]:
        """Number of experiments per status."""
        out: dict[str, int] = {"accepted": 0, "failed": 0, "rejected": 0}
        for d in self.table.all():
            out[d["status"]] = out.get(d["status"], 0) + 1
        return out

    def accepted(self) -> list[dict[str, Any]]:
        """Accepted experiments, by id."""
        return [d for d in self.all() if d["status"] == "accepted"]

    def dump(self) -> dict[str, Any]:
        """The whole content (for comparing two indexes)."""
        return {"experiments": self.all(), "meta": self.meta()}


def docs_equal(a: Iterable[dict[str, Any]], b: Iterable[dict[str, Any]]) -> bool:
    """Whether two lists of index documents are equal, ignoring order."""
    key = lambda d: d["id"]  # noqa: E731
    return sorted(a, key=key) == sorted(b, key=key)
