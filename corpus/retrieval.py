"""Embedding retrieval over the cognition base.

Each entry is split into a few *passages* (title + scenario, the scenario's sentences, the
expected effects with the levers, the algorithm's opening, the history); every passage is
embedded once and stored in an hnswlib cosine index (:class:`archive.vectors.VectorIndex`).
A query (the analyst's problem statement) is embedded and an entry's score is a soft maximum
(log-sum-exp, τ = 10) of the similarities of its passages, so a short symptom description can
match one sentence of a scenario, and entries matching on several passages rank higher.
``benchmarks/corpus_recall.py`` compares passage schemes.

The index is cached under the user cache dir (``archive.embed.cache_root() / "cognition"``),
keyed by a hash of the entry files, the embedder's name and the passage scheme, so it is
rebuilt exactly when an entry file, the model or the scheme changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from archive.embed import Embedder, cache_root, get_embedder
from archive.vectors import VectorIndex, VectorIndexError
from corpus.schema import ENTRIES_DIR, LEVERS, Entry, EntryError, entry_files, load_entries

#: Bumped when the passage texts of a scheme change, so old caches are not reused.
PASSAGE_VERSION = 2
#: τ of the soft max-pooling of passage similarities (measured on the first 35 symptom queries:
#: recall@5 0.91-0.94 for τ in 5-20, against 0.86 for a hard max).
POOL_TEMPERATURE = 10.0
#: The default passage scheme (see :data:`SCHEMES`).
DEFAULT_SCHEME = "passages"

_SENT_RE = re.compile(r"(?<=[.!?:])\s+(?=[A-Z\"'(])")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _sentences(text: str) -> list[str]:
    return [s for s in (_flat(x) for x in _SENT_RE.split(_flat(text))) if len(s.split()) >= 4]


def _head(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def _levers_text(e: Entry) -> str:
    return ", ".join(lv.replace("_", " ") for lv in e.levers)


def passages_single(e: Entry) -> list[str]:
    """One passage: title, scenario, levers and the algorithm's first words."""
    return [f"{e.title}. {_flat(e.scenario)} Levers: {_levers_text(e)}. {_head(e.algorithm, 40)}"]


def passages_fields(e: Entry) -> list[str]:
    """One passage per field: title + scenario, algorithm, history, effects + levers."""
    return [
        f"{e.title}. {_flat(e.scenario)}",
        f"{e.title}. {_flat(e.algorithm)}",
        f"{e.title}. {_flat(e.history)}",
        f"{_flat(e.expected_effects['probes'])} {_flat(e.expected_effects['loss'])} Levers: {_levers_text(e)}.",
    ]


def passages_default(e: Entry) -> list[str]:
    """Title + scenario, each scenario sentence, effects + levers, algorithm opening, history."""
    out = [f"{e.title}. {_flat(e.scenario)}"]
    out += _sentences(e.scenario)
    out.append(f"{_flat(e.expected_effects['probes'])} {_flat(e.expected_effects['loss'])} "
               f"Levers: {_levers_text(e)}.")
    out.append(f"{e.title}. {_head(e.algorithm, 60)}")
    out.append(f"{e.title}. {_flat(e.history)}")
    return out


#: Passage schemes by name: entry -> passages to embed (scored by max-pooling).
SCHEMES: dict[str, Callable[[Entry], list[str]]] = {
    "single": passages_single,
    "fields": passages_fields,
    "passages": passages_default,
}


def corpus_hash(files: Sequence[Path], embedder_name: str, scheme: str) -> str:
    """Hash of the entry files' names and bytes, the embedder's name and the passage scheme."""
    h = hashlib.sha256()
    h.update(f"{embedder_name}|{scheme}|v{PASSAGE_VERSION}".encode())
    for p in sorted(files, key=lambda x: x.name):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    """Where cached cognition indexes live."""
    return cache_root() / "cognition"


class CognitionBase:
    """The loaded entries and their passage index. Build with :meth:`load`."""

    def __init__(self, entries: list[Entry], embedder: Embedder, index: VectorIndex,
                 scheme: str = DEFAULT_SCHEME, from_cache: bool = False) -> None:
        self.entries = entries
        self.embedder = embedder
        self.index = index
        self.scheme = scheme
        #: True when the index was read from the cache instead of being embedded now.
        self.from_cache = from_cache
        self._by_id = {e.id: e for e in entries}

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def load(cls, embedder: Embedder | str | None = None, directory: str | Path | None = None,
             cache_dir: str | Path | None = None, scheme: str = DEFAULT_SCHEME,
             use_cache: bool = True) -> "CognitionBase":
        """Load and validate the entries of ``directory`` (default the shipped ones) and their
        passage index: from the cache when the entry files, embedder and scheme are unchanged,
        otherwise embedded now and saved. ``embedder`` is an :class:`Embedder`, a spec for
        :func:`archive.embed.get_embedder`, or None for the default local model.

        Raises :class:`corpus.schema.EntryError` for bad entry files,
        :class:`archive.embed.EmbedderUnavailable` if the model cannot load, ``ValueError`` for
        an unknown scheme."""
        if scheme not in SCHEMES:
            raise ValueError(f"unknown passage scheme {scheme!r} (known: {', '.join(SCHEMES)})")
        directory = Path(directory) if directory is not None else ENTRIES_DIR
        entries = load_entries(directory)
        if not entries:
            raise EntryError(f"{directory}: no entry files (*.toml) found")
        emb = embedder if embedder is not None and not isinstance(embedder, str) else get_embedder(embedder)
        key = corpus_hash(entry_files(directory), emb.name, scheme)
        cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = cdir / f"{scheme}-{key}.hnsw"
        if use_cache and path.is_file():
            index = VectorIndex(emb.dim, path)
            try:
                index.load()
                if index.meta.get("key") == key:
                    return cls(entries, emb, index, scheme, from_cache=True)
            except VectorIndexError:
                pass  # damaged or torn: rebuild below
        index = cls._build_index(entries, emb, scheme, path, use_cache)
        index.meta = {"key": key, "embedder": emb.name, "scheme": scheme, "entries": len(entries)}
        if use_cache:
            try:
                index.save()
                _prune(cdir, scheme, keep=path)
            except OSError:
                pass  # a read-only cache only costs re-embedding next time
        return cls(entries, emb, index, scheme)

    @staticmethod
    def _build_index(entries: list[Entry], emb: Embedder, scheme: str, path: Path,
                     use_cache: bool = True) -> VectorIndex:
        make = SCHEMES[scheme]
        keys: list[str] = []
        texts: list[str] = []
        for e in entries:
            for i, t in enumerate(make(e)):
                keys.append(f"{e.id}#{i}")
                texts.append(t)
        cache = TextVectorCache(path.parent, emb.name) if use_cache else None
        vectors = cache.embed(emb, texts) if cache is not None else emb.embed(texts)
        index = VectorIndex(emb.dim, path, capacity=max(len(keys), 16))
        index.add(keys, vectors)
        return index

    # -- access ---------------------------------------------------------------------------
    def _all_passages(self, qv: np.ndarray) -> list[tuple[str, float]]:
        """Similarity of the query to every passage (the index is small: a few hundred)."""
        k = len(self.index)
        while True:
            try:
                return self.index.query(qv, k=k)
            except RuntimeError:  # hnswlib found fewer than k neighbours in its graph
                if k <= 1:
                    return []
                k //= 2

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, entry_id: str) -> Entry | None:
        """The entry with this id; also accepts the id without ``arXiv:`` or a file stem."""
        if entry_id in self._by_id:
            return self._by_id[entry_id]
        return find_entry(self.entries, entry_id)

    def search(self, query: str, k: int = 5, lever: str | None = None) -> list[tuple[Entry, float]]:
        """The ``k`` entries most relevant to ``query``, best first, with their score: the soft
        maximum (:func:`soft_max_pool`) of the cosine similarities of the entry's passages, so
        at least the best passage's cosine, a little more when several passages match. With
        ``lever``, only entries tagged with that lever are ranked. Raises ``ValueError`` for an
        unknown lever."""
        if lever is not None and lever not in LEVERS:
            raise ValueError(f"unknown lever {lever!r} (known: {', '.join(LEVERS)})")
        if k <= 0 or not query.strip():
            return []
        qv = self.embedder.embed([query])[0]
        hits = self._all_passages(qv)
        sims: dict[str, list[float]] = {}
        for key, sim in hits:
            sims.setdefault(str(key).rsplit("#", 1)[0], []).append(sim)
        best = {eid: soft_max_pool(v) for eid, v in sims.items()}
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
        out: list[tuple[Entry, float]] = []
        for eid, sim in ranked:
            e = self._by_id.get(eid)
            if e is None or (lever is not None and lever not in e.levers):
                continue
            out.append((e, float(sim)))
            if len(out) == k:
                break
        return out


def soft_max_pool(sims: Sequence[float], temperature: float = POOL_TEMPERATURE) -> float:
    """log Σ exp(τ·s) / τ over an entry's passage similarities: the best match dominates, and
    further matching passages add a little (a hard max ignored them and ranked worse)."""
    a = np.asarray(sims, dtype=np.float64) * temperature
    m = float(a.max())
    return (m + float(np.log(np.exp(a - m).sum()))) / temperature


def find_entry(entries: Sequence[Entry], ref: str) -> Entry | None:
    """Resolve ``ref`` (full id, id without ``arXiv:``, or file name/stem) to an entry."""
    ref = ref.strip()
    stem = ref[:-5] if ref.endswith(".toml") else ref
    for e in entries:
        if ref in (e.id, e.short_id) or (e.path is not None and stem == e.path.stem):
            return e
    return None


def _prune(cdir: Path, scheme: str, keep: Path) -> None:
    """Keep the 8 newest cached indexes of this scheme (several embedders or entry versions may
    be in use at once) and delete older ones."""
    files = sorted(cdir.glob(f"{scheme}-*.hnsw"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[8:]:
        if old != keep:
            for p in (old, old.with_name(old.name + ".keys.json")):
                try:
                    p.unlink()
                except OSError:
                    pass


class TextVectorCache:
    """Embeddings of passage texts by content hash, one ``.npz`` per embedder, so editing one
    entry re-embeds only its changed passages. Written atomically; a damaged file is ignored."""

    def __init__(self, directory: Path, embedder_name: str) -> None:
        tag = hashlib.sha1(embedder_name.encode()).hexdigest()[:12]
        self.path = Path(directory) / f"vectors-{tag}.npz"

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(f"v{PASSAGE_VERSION}|{text}".encode()).hexdigest()

    def _read(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                return dict(zip(z["keys"].tolist(), z["vectors"]))
        except (OSError, KeyError, ValueError):
            return {}

    def embed(self, emb: Embedder, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts``: cached ones reused, the rest embedded now and stored."""
        known = self._read()
        keys = [self._key(t) for t in texts]
        # sorted by length so each embedding batch pads to similar lengths (about 2x less work)
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in known}.items(),
                         key=lambda kt: (len(kt[1]), kt[0]))
        if missing:
            vecs = emb.embed([t for _, t in missing])
            for (k, _), v in zip(missing, vecs):
                known[k] = np.asarray(v, dtype=np.float32)
            live = set(keys)
            # keep what is used now plus older vectors up to a bound (other schemes share it)
            order = [k for k in known if k in live] + [k for k in known if k not in live][:4000]
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".vectors-", suffix=".npz", dir=self.path.parent)
                os.close(fd)
                with open(tmp, "wb") as fh:
                    np.savez(fh, keys=np.asarray(order), vectors=np.stack([known[k] for k in order]))
                os.replace(tmp, self.path)
            except OSError:
                pass
        return np.stack([known[k] for k in keys]).astype(np.float32)


#: The retrieval quality set (symptom queries with expected entry ids).
EVAL_QUERIES: Path = Path(__file__).resolve().parent / "eval_queries.toml"


def load_eval_queries(path: str | Path | None = None, style: str | None = None
                      ) -> list[tuple[str, list[str]]]:
    """The (query text, expected entry ids) pairs of the quality set; with ``style``, only the
    queries of that style (``"symptom"``, the default style, or ``"paraphrase"``, held out)."""
    import tomllib

    data = tomllib.loads(Path(path or EVAL_QUERIES).read_text(encoding="utf-8"))
    return [(q["text"], list(q["expected"])) for q in data["query"]
            if style is None or q.get("style", "symptom") == style]


def recall_at_k(base: CognitionBase, queries: Sequence[tuple[str, Sequence[str]]], k: int = 5
                ) -> tuple[float, list[tuple[str, list[str], list[str]]]]:
    """Mean over queries of |expected ∩ top-k| / |expected|, and the per-query misses as
    (query, missing ids, returned ids) for queries that did not get everything."""
    total = 0.0
    misses: list[tuple[str, list[str], list[str]]] = []
    for text, expected in queries:
        got = [e.id for e, _ in base.search(text, k=k)]
        found = [x for x in expected if x in got]
        total += len(found) / len(expected)
        if len(found) < len(expected):
            misses.append((text, [x for x in expected if x not in got], got))
    return total / max(len(queries), 1), misses
