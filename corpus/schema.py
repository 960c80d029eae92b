"""The format of a cognition-base entry, and its loader/validator.

One TOML file per paper under ``corpus/entries/``. File name: the id without the ``arXiv:``
prefix (``arXiv:2006.16236`` -> ``2006.16236.toml``); a non-arXiv source gets a slug of its id
(every character outside ``[A-Za-z0-9.-]`` becomes ``-``; see :func:`entry_filename`).

Fields (all required unless marked optional)::

    id        = "arXiv:2006.16236"          # "arXiv:<number>" or, for other sources, "<host/path>"
    title     = "Transformers are RNNs: ..."
    authors   = ["Angelos Katharopoulos", "Apoorv Vyas", "et al."]   # list; may be abbreviated
    year      = 2020                         # int
    scenario  = '''...'''   # the problem, as SYMPTOMS an analyst sees in metrics (40-220 words)
    algorithm = '''...'''   # the mechanism: update rule / equation written out, and its cost
    history   = '''...'''   # what it fixed in earlier work, what it led to
    levers    = ["feature_map", "normalization"]   # 1+ tags from LEVERS below
    related   = ["arXiv:2102.11174"]          # optional: ids of closely related entries
    [expected_effects]
    probes = '''...'''      # expected effect on the synthetic probes (MQAR / associative recall,
                            # noisy and fuzzy recall, selective copying, compression)
    loss   = '''...'''      # expected effect on LM loss / bits per byte, and on speed

Write the long strings as TOML *literal* multi-line strings (``'''...'''``) so backslashes and
math need no escaping; use plain Unicode math (Σ, φ, ᵀ, ⊙, β_t). Text is in our own words (no
copied abstracts); where unsure, say less. The scenario matters most: write it as the symptoms an
analyst would describe ("recall probes fail while loss is fine", "loss spikes at long lengths").

Extending LEVERS: add the tag with a one-line meaning to ``LEVERS`` here (the built-in
researcher maps levers to mutation operators, so keep the set small).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

#: Directory holding the shipped entries.
ENTRIES_DIR: Path = Path(__file__).resolve().parent / "entries"
#: Copy of the reading list the entries cover (``id<TAB>title``, ``#`` comments).
READING_LIST: Path = Path(__file__).resolve().parent / "reading_list.tsv"

#: The fixed lever vocabulary: tag -> what design move it names.
LEVERS: dict[str, str] = {
    "feature_map": "kernel / feature map applied to queries and keys (elu+1, ReLU, exp, polynomial, learned)",
    "decay": "fixed or learned (data-independent) forgetting of the state, e.g. per-head γ",
    "data_dependent_gate": "input-dependent forget/input gates or selective Δ on the state",
    "delta_rule": "error-correcting state write S += β k (v - Sᵀk)ᵀ and its variants (Householder products)",
    "short_conv": "short causal (depthwise) convolution on q/k/v or the input stream",
    "output_gate": "multiplicative gate on the mixer output (e.g. silu(W x) ⊙ o)",
    "normalization": "normalisation of the output, state, q/k (RMSNorm, GroupNorm, L2 norm of keys) or denominators",
    "multi_scale": "several time scales / decay rates / resolutions (multi-head decays, hierarchies, long convolutions)",
    "state_expansion": "larger recurrent state (matrix-valued state, wider key dim, outer-product expansion)",
    "chunking": "chunkwise-parallel / blockwise computation of a recurrence or attention",
    "head_layout": "number and sharing of heads (multi-query, grouped-query, head dims)",
    "positional": "position information (RoPE, relative bias, ALiBi-like decay, length extrapolation)",
    "hybrid": "mixing layer types (attention + recurrence/SSM/convolution) across or within layers",
    "sparsity": "sparse or selected attention patterns, sliding windows, token eviction, mixture of experts",
    "low_rank": "low-rank or structured projections and matrices (low-rank K/V projection, Monarch, Nyström)",
    "memory": "explicit memory / retrieval: fast weights, slots, test-time-learned memory, KV cache policy",
    "hardware": "IO-aware or tensor-core-friendly computation, kernels, parallelism across devices",
    "stability": "training stability / numerical range: initialisation, eigenvalue range, clipping, sinks",
}

#: Required fields and their TOML types (``authors``/``levers`` are lists of strings).
REQUIRED_FIELDS: tuple[str, ...] = (
    "id", "title", "authors", "year", "scenario", "algorithm", "history", "levers", "expected_effects",
)
OPTIONAL_FIELDS: tuple[str, ...] = ("related",)
#: Long-text fields and their allowed word-count range (inclusive).
TEXT_FIELDS: tuple[str, ...] = ("scenario", "algorithm", "history")
MIN_WORDS: int = 40
MAX_WORDS: int = 220
EFFECT_KEYS: tuple[str, ...] = ("probes", "loss")
MIN_EFFECT_WORDS: int = 8

_ARXIV_RE = re.compile(r"^arXiv:\d{4}\.\d{4,5}$")
_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9./_-]*$")


class EntryError(ValueError):
    """A cognition entry file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Entry:
    """One paper of the cognition base, in our own words."""

    id: str
    title: str
    authors: tuple[str, ...]
    year: int
    scenario: str
    algorithm: str
    history: str
    levers: tuple[str, ...]
    expected_effects: dict[str, str]
    related: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def short_id(self) -> str:
        """The id without the ``arXiv:`` prefix (what file names and the CLI use)."""
        return self.id[len("arXiv:"):] if self.id.startswith("arXiv:") else self.id

    def to_dict(self) -> dict:
        """A JSON-able dict of the entry (without the path)."""
        return {
            "id": self.id, "title": self.title, "authors": list(self.authors), "year": self.year,
            "scenario": self.scenario, "algorithm": self.algorithm, "history": self.history,
            "levers": list(self.levers), "expected_effects": dict(self.expected_effects),
            "related": list(self.related),
        }


def entry_filename(entry_id: str) -> str:
    """The file name an entry with this id must have (``arXiv:2006.16236`` -> ``2006.16236.toml``)."""
    stem = entry_id[len("arXiv:"):] if entry_id.startswith("arXiv:") else entry_id
    stem = re.sub(r"[^A-Za-z0-9.-]+", "-", stem).strip("-")
    return f"{stem}.toml"


def word_count(text: str) -> int:
    """Whitespace-separated words in ``text``."""
    return len(text.split())


def _fail(path: Path | str, fld: str | None, msg: str) -> EntryError:
    where = f"{path}" + (f": field '{fld}'" if fld else "")
    return EntryError(f"{where}: {msg}")


def validate_data(data: dict, path: Path | str = "<entry>", check_filename: bool = True) -> Entry:
    """Validate one parsed entry and build the :class:`Entry`. Raises :class:`EntryError`."""
    unknown = sorted(set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise _fail(path, unknown[0], f"unknown field (allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})")
    for fld in REQUIRED_FIELDS:
        if fld not in data:
            raise _fail(path, fld, "missing required field")
    eid = data["id"]
    if not isinstance(eid, str) or not (_ARXIV_RE.match(eid) or (not eid.startswith("arXiv") and _SOURCE_RE.match(eid))):
        raise _fail(path, "id", f"must be 'arXiv:NNNN.NNNNN' or a source like 'host/path', got {eid!r}")
    if check_filename and isinstance(path, Path) and path.name != entry_filename(eid):
        raise _fail(path, "id", f"file must be named {entry_filename(eid)!r} for id {eid!r}")
    if not isinstance(data["title"], str) or not data["title"].strip():
        raise _fail(path, "title", "must be a non-empty string")
    authors = data["authors"]
    if not isinstance(authors, list) or not authors or not all(isinstance(a, str) and a.strip() for a in authors):
        raise _fail(path, "authors", "must be a non-empty list of non-empty strings")
    year = data["year"]
    if not isinstance(year, int) or isinstance(year, bool) or not 1950 <= year <= 2030:
        raise _fail(path, "year", f"must be an integer year, got {year!r}")
    for fld in TEXT_FIELDS:
        text = data[fld]
        if not isinstance(text, str):
            raise _fail(path, fld, "must be a string")
        n = word_count(text)
        if not MIN_WORDS <= n <= MAX_WORDS:
            raise _fail(path, fld, f"has {n} words; write {MIN_WORDS}-{MAX_WORDS} (aim for 60-150)")
    levers = data["levers"]
    if not isinstance(levers, list) or not levers or not all(isinstance(x, str) for x in levers):
        raise _fail(path, "levers", "must be a non-empty list of lever tags")
    bad = [x for x in levers if x not in LEVERS]
    if bad:
        raise _fail(path, "levers", f"unknown lever {bad[0]!r} (known: {', '.join(LEVERS)})")
    if len(set(levers)) != len(levers):
        raise _fail(path, "levers", "lists a lever twice")
    eff = data["expected_effects"]
    if not isinstance(eff, dict):
        raise _fail(path, "expected_effects", "must be a table with 'probes' and 'loss'")
    extra = sorted(set(eff) - set(EFFECT_KEYS))
    if extra:
        raise _fail(path, "expected_effects", f"unknown key {extra[0]!r} (allowed: probes, loss)")
    for key in EFFECT_KEYS:
        val = eff.get(key)
        if not isinstance(val, str) or word_count(val) < MIN_EFFECT_WORDS:
            raise _fail(path, f"expected_effects.{key}", f"must be a string of at least {MIN_EFFECT_WORDS} words")
    related = data.get("related", [])
    if not isinstance(related, list) or not all(isinstance(r, str) for r in related):
        raise _fail(path, "related", "must be a list of entry ids")
    return Entry(
        id=eid, title=data["title"].strip(), authors=tuple(a.strip() for a in authors), year=year,
        scenario=data["scenario"].strip(), algorithm=data["algorithm"].strip(),
        history=data["history"].strip(), levers=tuple(levers),
        expected_effects={k: eff[k].strip() for k in EFFECT_KEYS}, related=tuple(related),
        path=path if isinstance(path, Path) else None,
    )


def load_entry(path: str | Path) -> Entry:
    """Read and validate one entry file. Raises :class:`EntryError` naming the file and field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, None, f"is not valid TOML ({exc})") from None
    except OSError as exc:
        raise _fail(path, None, f"cannot be read ({exc})") from None
    return validate_data(data, path)


def entry_files(directory: str | Path | None = None) -> list[Path]:
    """The entry files of ``directory`` (default :data:`ENTRIES_DIR`), sorted by name."""
    return sorted(Path(directory or ENTRIES_DIR).glob("*.toml"))


def load_entries(directory: str | Path | None = None) -> list[Entry]:
    """Load and validate every entry of ``directory``; duplicate ids are an error.

    Raises :class:`EntryError` listing every problem found (one per line)."""
    entries: list[Entry] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for p in entry_files(directory):
        try:
            e = load_entry(p)
        except EntryError as exc:
            problems.append(str(exc))
            continue
        if e.id in seen:
            problems.append(f"{p}: field 'id': duplicate id {e.id!r} (also in {seen[e.id].name})")
            continue
        seen[e.id] = p
        entries.append(e)
    if problems:
        raise EntryError("\n".join(problems))
    return entries


def reading_list(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The (id, title) pairs of the reading list, in order, without duplicates."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in Path(path or READING_LIST).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rid, _, title = line.partition("\t")
        if rid not in seen:
            seen.add(rid)
            out.append((rid.strip(), title.strip()))
    return out
