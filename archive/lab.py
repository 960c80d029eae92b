"""A lab folder (docs/ARCHITECTURE.md, "The archive")::

    lab/asiarch.toml     configuration (archive.config)
    lab/archive/         bare git repo, one commit per experiment: the source of truth
    lab/index.json       tinydb index, derived (asiarch-tui reindex rebuilds it)
    lab/novelty.hnsw     hnswlib index of motivation embeddings, derived (+ .keys.json)
    lab/scores.json      fitness re-scored against the current yardstick, derived (archive.scores)
    lab/baselines/       the seed (the yardstick) and reference baselines measured at each scale
    lab/runs/<id>/       scratch of the run in flight
    lab/events.jsonl     the event log (written by the loop)
    lab/.lock            the lab lock (archive.lock)

:meth:`Lab.init` creates it with the seed experiment (the DeltaNet reference mixer, accepted,
not measured yet: empty metrics and fitness None; the loop commits a measured evaluation of the
seed when it first runs). :meth:`Lab.open` recovers from a writer that died (stale git locks,
``main``/``best``) and brings the index up to date; the novelty index loads on first use (it
needs the embedding model).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from archive.candidates import CandidateSet
from archive.config import CONFIG_NAME, LabConfig, load_config, write_config
from archive.embed import Embedder, EmbedderUnavailable, get_embedder
from archive.index import ExperimentIndex
from archive.lock import LabBusyError, LabLock, pid_alive
from archive.novelty import NoveltyIndex
from archive.record import SEED_ID, ExperimentRecord
from archive.scores import SCORES_NAME, ScoreBook
from archive.store import ArchiveStore

#: index.json and novelty.hnsw are rewritten whole, so back-to-back commits write them at most
#: this often (seconds); close() writes the rest, and a kill loses nothing: they carry the
#: archive state they reflect and catch up from git at the next open.
DERIVED_WRITE_INTERVAL = 2.0

SEED_NAME = "DeltaNet"
SEED_MOTIVATION = """\
DeltaNet: linear attention whose recurrent state is updated with the delta rule.

Plain linear attention only adds key-value outer products to its state, so old associations
are never removed and retrieval degrades as the sequence grows. The delta rule instead writes
the error between the new value and what the state currently returns for the key,
S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, with L2-normalised keys and a learnt
per-token write strength beta_t in (0, 1), so a key's old value is overwritten. A short causal
convolution on q, k and v helps local patterns. Trained with the chunked (WY) form, it costs
O(L) in sequence length. It is the seed of the lab: the starting point of the search.
"""
SEED_PROBLEM = "Linear-attention state forgets nothing, so associative recall degrades with length."


class LabError(RuntimeError):
    """A lab that cannot be created or opened; the message says why and what to do."""


def seed_source() -> str:
    """The DeltaNet reference mixer's source, through the registry of ``training.mixers``
    (``reference_source(SEED_MIXER)``, or the file ``REFERENCE_MIXERS[SEED_MIXER]``)."""
    try:
        import training.mixers as mixers  # noqa: PLC0415

        name = getattr(mixers, "SEED_MIXER", "deltanet")
        if hasattr(mixers, "reference_source"):
            return mixers.reference_source(name)
        return Path(mixers.REFERENCE_MIXERS[name]).read_text(encoding="utf-8")
    except (ImportError, AttributeError, KeyError, OSError) as exc:
        raise LabError(
            "the seed mixer (DeltaNet) cannot be read from the reference mixers "
            f"(training.mixers.REFERENCE_MIXERS['deltanet']): {exc!r}. The installation looks "
            "incomplete; reinstall asiarch (scripts/setup.sh)."
        ) from None


def seed_record(code: str, config: LabConfig) -> ExperimentRecord:
    """The seed experiment (id ``0000``), accepted, unmeasured."""
    return ExperimentRecord(
        id=SEED_ID, name=SEED_NAME, parent=None, status="accepted", motivation=SEED_MOTIVATION,
        code=code, problem=SEED_PROBLEM, analysis="The seed: not evaluated yet.",
        scale=config.loop.scale, researcher="seed", seed=config.loop.seed,
        operators=["seed"], extra={"reference": "deltanet"},
    )


class Lab:
    """An open lab. Use :meth:`init` / :meth:`open`; attributes ``path, config, store, index,
    candidates`` and (lazily) ``novelty``."""

    def __init__(self, path: Path, config: LabConfig, store: ArchiveStore, index: ExperimentIndex,
                 lock: LabLock, embedder: Embedder | None = None, scores: ScoreBook | None = None) -> None:
        self.path = path
        self.config = config
        self.store = store
        self.index = index
        #: re-scored fitness (derived; see archive.scores), read by the index and ``best``
        self.scores = scores if scores is not None else ScoreBook(path / SCORES_NAME)
        self.index.overlay = self.scores.overlay
        self.store.score_of = self.scores.fitness
        self.store.promotion_of = self.scores.promotion
        self._lock = lock
        self._embedder = embedder
        self._novelty: NoveltyIndex | None = None
        self.candidates = CandidateSet(index, store, config.sampling.top_k,
                                       tuple(config.sampling.reference_ranks),  # type: ignore[arg-type]
                                       config.sampling.n_references)
        #: What :meth:`open` had to repair (for a log line / warning).
        self.recovered: list[str] = []

    # -- paths ---------------------------------------------------------------------------
    @staticmethod
    def is_lab(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a lab (its config and archive)."""
        p = Path(path)
        return (p / CONFIG_NAME).is_file() and (p / "archive" / "HEAD").is_file()

    @property
    def runs_dir(self) -> Path:
        """``lab/runs``: scratch folders of runs in flight."""
        return self.path / "runs"

    @property
    def events_path(self) -> Path:
        """``lab/events.jsonl``."""
        return self.path / "events.jsonl"

    # -- creation / opening --------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str], demo: bool = True, config: LabConfig | None = None,
             seed_code: str | None = None, embedder: Embedder | None = None) -> "Lab":
        """Create a lab at ``path`` (a new or empty folder): the commented config, the archive
        with the seed commit, the index and the novelty index. ``demo`` picks the quick
        ``demo`` scale with built-in agents (no LLM needed); otherwise the config defaults.
        ``seed_code`` overrides the seed mixer source (tests)."""
        path = Path(path).absolute()
        if cls.is_lab(path):
            raise LabError(f"{path} is already a lab; open it, or choose another folder")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise LabError(f"{path} exists and is not empty; choose a new folder for the lab")
        cfg = config or LabConfig()
        if demo and config is None:
            cfg.loop.scale = "demo"
        code = seed_code if seed_code is not None else seed_source()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Built in a temporary sibling folder and renamed into place: a kill leaves no half lab.
        for old in path.parent.glob(f".{path.name}.init-*"):
            with contextlib.suppress(OSError):
                pid = int(old.name.rsplit("-", 1)[1])
                if not pid_alive(pid):
                    shutil.rmtree(old, ignore_errors=True)
        tmp = path.parent / f".{path.name}.init-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            (tmp / "runs").mkdir()
            write_config(tmp / CONFIG_NAME, cfg)
            store = ArchiveStore.create(tmp / "archive")
            store.commit(seed_record(code, cfg))
            index = ExperimentIndex(tmp / "index.json")
            index.sync(store)
            notes: list[str] = []
            if embedder is not None or os.environ.get("ASIARCH_INIT_NOVELTY", "1") != "0":
                try:
                    emb = embedder or get_embedder(cfg)
                    NoveltyIndex(tmp / "novelty.hnsw", emb, cfg.loop.novelty_threshold).sync(store)
                except Exception as exc:  # derived: built on first use
                    notes.append(f"novelty index not built yet: {exc}")
            index.close()
            store.close()
            try:
                os.rename(tmp, path)  # onto a missing or empty folder only
            except OSError:
                raise LabError(f"{path} was created by another process meanwhile; choose another folder") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        lab = cls.open(path, embedder=embedder)
        lab.recovered = notes
        return lab

    @classmethod
    def open(cls, path: str | os.PathLike[str], embedder: Embedder | None = None,
             lock_timeout: float = 0.0, maintenance_every: int = 1000) -> "Lab":
        """Open the lab at ``path``. If no other process holds the lab lock (waiting up to
        ``lock_timeout`` s), repair what a dead writer left and write the caught-up index; if
        one does, open read-only in effect (the index is caught up in memory only).
        ``maintenance_every``: pack the repo every that many commits."""
        path = Path(path).absolute()
        if not cls.is_lab(path):
            raise LabError(
                f"{path} is not a lab (no {CONFIG_NAME} and archive/); create one with `asiarch-tui init {path}`"
            )
        cfg = load_config(path / CONFIG_NAME)
        lock = LabLock(path / ".lock")
        try:
            lock.acquire(timeout=lock_timeout)
            locked = True
        except LabBusyError:
            locked = False
        try:
            store = ArchiveStore(path / "archive", maintenance_every=maintenance_every)
            scores = ScoreBook(path / SCORES_NAME)
            store.score_of = scores.fitness  # before recover(): best follows the re-scored fitness
            store.promotion_of = scores.promotion  # ... and the re-decided promotions
            recovered: list[str] = []
            if locked:
                recovered = store.recover(remove_stale=lock.previous_crashed is not None)
                if len(store) == 0:  # a lab whose first commit never happened
                    store.commit(seed_record(seed_source(), cfg))
                    recovered.append("committed the missing seed experiment")
            index = ExperimentIndex(path / "index.json", flush_interval=DERIVED_WRITE_INTERVAL,
                                    overlay=scores.overlay)
            status = index.sync(store, write=locked)
            if status == "rebuilt":
                recovered.append("rebuilt index.json from the archive")
            lab = cls(path, cfg, store, index, lock, embedder, scores)
            lab.recovered = recovered
            return lab
        finally:
            if locked:
                lock.release()

    # -- the lock ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float | None = 30.0) -> Iterator["Lab"]:
        """Hold the inter-process lab lock (re-entrant). :class:`LabBusyError` if another
        process holds it for longer than ``timeout`` seconds."""
        self._lock.acquire(timeout=timeout)
        try:
            if self._lock.previous_crashed is not None:
                self.recovered += self.store.recover(remove_stale=True)
                self._lock.previous_crashed = None
            self.store.refresh_if_changed()
            yield self
        finally:
            self._lock.release()

    # -- derived stores ------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The configured embedder (loaded on first use, cached per process)."""
        if self._embedder is None:
            self._embedder = get_embedder(self.config)
        return self._embedder

    @property
    def novelty(self) -> NoveltyIndex:
        """The novelty index, loaded (and caught up with the archive) on first use."""
        if self._novelty is None:
            nov = NoveltyIndex(self.path / "novelty.hnsw", self.embedder, self.config.loop.novelty_threshold,
                               save_interval=DERIVED_WRITE_INTERVAL)
            _locked_if_free(self._lock, lambda locked: nov.sync(self.store, write=locked))
            self._novelty = nov
        return self._novelty

    def refresh(self) -> bool:
        """Pick up experiments another process committed (cheap when nothing changed): the
        store's refs, then the index (in memory; written if the lock is free). Returns whether
        anything changed."""
        if not self.store.refresh_if_changed() and self.index.meta().get("state") == self.store.state():
            return False
        _locked_if_free(self._lock, lambda locked: self.index.sync(self.store, write=locked))
        return True

    # -- writing -------------------------------------------------------------------------
    def next_id(self) -> str:
        """The next experiment id."""
        self.store.refresh_if_changed()
        return self.store.next_id()

    def commit(self, record: ExperimentRecord, novelty: bool = True) -> str:
        """docs/ARCHITECTURE.md step 9: the archive commit, then the index and the novelty index, under the
        lab lock. A record with an empty ``id`` gets the next id under the lock. Returns the
        commit sha."""
        with self.lock():
            before = self.store.state()
            if self.index.meta().get("state") != before:
                self.index.sync(self.store)
            nov = self.novelty if novelty else None
            if nov is not None and nov.state != before:
                nov.sync(self.store)
            sha = self.store.commit(record)
            state = self.store.state()
            self.index.add(record, sha, state)
            if nov is not None:
                try:
                    nov.add(record.id, record.motivation, state)
                except EmbedderUnavailable as exc:  # derived: caught up on next use
                    self._novelty = None
                    self.recovered.append(f"novelty index behind the archive: {exc}")
            return sha

    def apply_scores(self, yardstick: str | None, scores: dict[str, dict[str, Any]],
                     best: Any = "fittest") -> dict[str, Any]:
        """Store re-scored fitness (``{id: {"fitness", "fitness_components", "yardstick"}}``,
        computed against the yardstick of version ``yardstick``) in ``scores.json``, rebuild the
        index with it and move ``best``: to ``best`` (an id, or None for no best) when the caller
        decided it (the promotion rule replayed over the re-scored experiments), else
        (``"fittest"``) to the fittest accepted experiment. Records keep their committed
        metrics. Returns ``{"rescored", "best_before", "best", "best_moved"}``."""
        with self.lock():
            before = self.store.best()
            self.scores.replace(yardstick, scores)
            self.index.rebuild(self.store)
            if best == "fittest":
                ranked = [d for d in self.index.all()
                          if d.get("status") == "accepted" and d.get("fitness") is not None]
                best = max(ranked, key=lambda d: (float(d["fitness"]), -int(d["id"])))["id"] if ranked else None
            moved = self.store.move_best(best)
            return {"rescored": len(scores), "best_before": before.id if before else None, "best": best,
                    "best_moved": moved}

    def reindex(self, novelty: bool = True) -> dict[str, Any]:
        """Rebuild the index (and the novelty index) from git. Returns counts and timings."""
        import time

        out: dict[str, Any] = {}
        with self.lock():
            t = time.perf_counter()
            out["experiments"] = self.index.rebuild(self.store)
            out["index_seconds"] = time.perf_counter() - t
            if novelty:
                t = time.perf_counter()
                nov = NoveltyIndex(self.path / "novelty.hnsw", self.embedder, self.config.loop.novelty_threshold)
                out["motivations"] = nov.rebuild(self.store)
                self._novelty = nov
                out["novelty_seconds"] = time.perf_counter() - t
        return out

    def close(self) -> None:
        """Flush the derived stores and stop git helpers."""

        def flush(locked: bool) -> None:
            if locked:
                self.index.flush()
                if self._novelty is not None:
                    self._novelty.save()

        with contextlib.suppress(Exception):
            _locked_if_free(self._lock, flush)
        self.store.close()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _locked_if_free(lock: LabLock, fn: Any) -> Any:
    """``fn(True)`` under the lock if this process holds it or it is free right now, else
    ``fn(False)`` (another process writes: do not touch the files)."""
    if lock.held:
        return fn(True)
    try:
        lock.acquire(timeout=0)
    except LabBusyError:
        return fn(False)
    try:
        return fn(True)
    finally:
        lock.release()
