"""The novelty index: embeddings of every experiment's motivation in a persisted hnswlib index
(``lab/novelty.hnsw``), queried before a proposal is checked (docs/ARCHITECTURE.md step 3).

A motivation whose cosine similarity with an earlier one reaches the threshold (``[loop]
novelty_threshold``) is not novel. The index records the archive state and the embedder it was
built with; :meth:`NoveltyIndex.sync` embeds what is missing, and rebuilds when the file is
missing or damaged or the embedder changed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from archive.embed import Embedder
from archive.vectors import VectorIndex, VectorIndexError


class NoveltyIndex:
    """Motivation embeddings of a lab, keyed by experiment id."""

    def __init__(self, path: str | os.PathLike[str], embedder: Embedder, threshold: float = 0.80,
                 save_interval: float = 0.0) -> None:
        self.path = Path(path)
        self.embedder = embedder
        self.threshold = float(threshold)
        self.save_interval = save_interval
        self._last_save = 0.0
        self._dirty = False
        self.vectors = VectorIndex(embedder.dim, self.path)
        self.loaded = False
        try:
            self.vectors.load()
            self.loaded = self.vectors.meta.get("embedder") == embedder.name
            if not self.loaded:
                self.vectors.clear()
        except VectorIndexError:
            self.vectors.clear()

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def state(self) -> str | None:
        """The archive state this index reflects (None if never synced)."""
        return self.vectors.meta.get("state")

    def add(self, exp_id: str, motivation: str, state: str | None = None) -> None:
        """Embed and add one motivation (replacing an earlier one of the same id)."""
        self.vectors.add([str(exp_id)], self.embedder.embed([motivation]))
        if state is not None:
            self.vectors.meta["state"] = state
        self._dirty = True
        if self.save_interval <= 0 or time.monotonic() - self._last_save >= self.save_interval:
            self.save()

    def save(self) -> None:
        """Persist (atomic) if anything changed."""
        if self._dirty:
            self.vectors.meta["embedder"] = self.embedder.name
            self.vectors.save()
        self._dirty = False
        self._last_save = time.monotonic()

    def nearest(self, text: str, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` experiments whose motivation is most similar to ``text``, with cosine
        similarity, most similar first."""
        if not len(self.vectors):
            return []
        return self.vectors.query(self.embedder.embed([text])[0], k)

    def check(self, text: str) -> tuple[bool, tuple[str, float] | None]:
        """``(is_novel, nearest)``: novel when the nearest earlier motivation's similarity is
        below the threshold (or there is none)."""
        near = self.nearest(text, 1)
        if not near:
            return True, None
        return near[0][1] < self.threshold, near[0]

    def sync(self, store: Any, write: bool = True, batch: int = 64) -> str:
        """Make the index hold every experiment of ``store`` (an ArchiveStore): ``"ok"``,
        ``"updated"`` (embedded the missing ones) or ``"rebuilt"``."""
        state = store.state()
        if self.loaded and self.state == state and len(self.vectors) == len(store):
            return "ok"
        want = store.ids()
        extra = set(self.vectors.keys) - set(want)
        result = "updated"
        if extra or not self.loaded:
            self.vectors.clear()
            result = "rebuilt"
        missing = [i for i in want if i not in self.vectors]
        for j in range(0, len(missing), batch):
            ids = missing[j:j + batch]
            texts = [store.read_file(i, "motivation.md").decode("utf-8", "replace") for i in ids]
            self.vectors.add(ids, self.embedder.embed(texts))
        self.vectors.meta["state"] = state
        self.loaded = True
        self._dirty = True
        if write:
            self.save()
        return result

    def rebuild(self, store: Any, write: bool = True) -> int:
        """Re-embed every motivation. Returns the count."""
        self.vectors.clear()
        self.loaded = False
        self.sync(store, write)
        return len(self.vectors)
