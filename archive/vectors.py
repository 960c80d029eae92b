"""A persisted hnswlib index (cosine) of vectors with string keys.

Two files: ``<path>`` (hnswlib's index) and ``<path>.keys.json`` (the keys by label, the
dimension, and free ``meta`` such as the archive state and embedder name the index was built
from). Both are written to temporary files and renamed into place, the index first; on load a
count mismatch between them means a torn save and is reported as :class:`VectorIndexError`, so
the owner rebuilds.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Hashable, Sequence

import hnswlib
import numpy as np

from archive.config import atomic_write_text


class VectorIndexError(RuntimeError):
    """A missing, damaged or mismatched index file."""


class VectorIndex:
    """hnswlib cosine index; ``query`` returns ``(key, cosine similarity)`` pairs, best first."""

    def __init__(self, dim: int, path: str | os.PathLike[str] | None = None, *, M: int = 16,
                 ef_construction: int = 200, ef: int = 64, capacity: int = 1024) -> None:
        self.dim = int(dim)
        self.path = Path(path) if path is not None else None
        self.M, self.ef_construction, self.ef = M, ef_construction, ef
        self.keys: list[Any] = []
        self._label: dict[Any, int] = {}
        self.meta: dict[str, Any] = {}
        self._mutex = threading.RLock()
        self._index = hnswlib.Index(space="cosine", dim=self.dim)
        self._index.init_index(max_elements=capacity, ef_construction=ef_construction, M=M)
        self._index.set_ef(ef)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._label

    @property
    def keys_path(self) -> Path:
        """The sidecar file with the keys and meta."""
        assert self.path is not None
        return self.path.with_name(self.path.name + ".keys.json")

    def add(self, keys: Sequence[Any], vectors: np.ndarray) -> None:
        """Add (or replace, for a key already present) one vector per key."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(keys), self.dim)
        with self._mutex:
            self._add(keys, vectors)

    def _add(self, keys: Sequence[Any], vectors: np.ndarray) -> None:
        labels = []
        for k in keys:
            lab = self._label.get(k)
            if lab is None:
                lab = len(self.keys)
                self.keys.append(k)
                self._label[k] = lab
            labels.append(lab)
        need = len(self.keys)
        cap = self._index.get_max_elements()
        if need > cap:
            self._index.resize_index(max(need, cap * 2))
        self._index.add_items(vectors, np.asarray(labels, dtype=np.int64))

    def query(self, vector: np.ndarray, k: int = 5) -> list[tuple[Any, float]]:
        """The ``k`` nearest keys and their cosine similarity, most similar first."""
        if not self.keys or k <= 0:
            return []
        k = min(k, len(self.keys))
        with self._mutex:
            self._index.set_ef(max(self.ef, k))
            labels, dists = self._index.knn_query(np.asarray(vector, dtype=np.float32).reshape(1, self.dim), k=k)
        return [(self.keys[int(l)], float(1.0 - d)) for l, d in zip(labels[0], dists[0])]

    def save(self) -> None:
        """Write both files atomically (index first, then the keys)."""
        if self.path is None:
            raise VectorIndexError("this vector index has no path to save to")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            with self._mutex:
                self._index.save_index(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        side = {"dim": self.dim, "count": len(self.keys), "keys": self.keys, "meta": self.meta,
                "M": self.M, "ef_construction": self.ef_construction}
        atomic_write_text(self.keys_path, json.dumps(side))

    def load(self) -> None:
        """Read both files; :class:`VectorIndexError` if missing, damaged or inconsistent."""
        if self.path is None or not self.path.is_file() or not self.keys_path.is_file():
            raise VectorIndexError(f"no vector index at {self.path}")
        try:
            side = json.loads(self.keys_path.read_text())
            keys = side["keys"]
            if int(side["dim"]) != self.dim:
                raise VectorIndexError(f"{self.path} has dimension {side['dim']}, expected {self.dim}")
            idx = hnswlib.Index(space="cosine", dim=self.dim)
            idx.load_index(str(self.path), max_elements=max(len(keys), 1024))
        except VectorIndexError:
            raise
        except Exception as exc:
            raise VectorIndexError(f"damaged vector index {self.path}: {exc}") from None
        if idx.get_current_count() != len(keys) or side.get("count") != len(keys):
            raise VectorIndexError(f"{self.path} and its keys file disagree (torn save)")
        idx.set_ef(self.ef)
        self._index = idx
        self.keys = list(keys)
        self._label = {k: i for i, k in enumerate(self.keys)}
        self.meta = dict(side.get("meta") or {})

    def clear(self) -> None:
        """Drop every vector."""
        self.__init__(self.dim, self.path, M=self.M, ef_construction=self.ef_construction, ef=self.ef)  # type: ignore[misc]
