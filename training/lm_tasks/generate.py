"""Deterministic generator of the shipped lm-eval task data (``training/lm_tasks/*.jsonl``).

All items come from the *held-out* documents of :func:`training.data.load_corpus` (the
validation split of the Shakespeare corpus, never trained on), so they measure generalisation:

- ``shakespeare_lastword`` (LAMBADA-style): a passage of up to ``MAX_CONTEXT`` bytes (from a
  line start) that ends with a sentence of a speech, the sentence's last word cut off; the target
  is that word (``" " + word``, the final punctuation dropped).
  As in LAMBADA, items are chosen so that the word is predictable from the broad context: the
  word (4+ letters, not a common function word) already occurs earlier in the passage.
  Metrics: ``acc`` (every byte of the word is the model's argmax) and ``perplexity`` (per word).
- ``shakespeare_cloze`` (story-cloze style multiple choice): the text before a sentence (it ends
  with a line break after an earlier sentence of the same speech), and four line-aligned
  sentences: the true next one and three distractors drawn from elsewhere in the held-out text
  (another document, or more than ``FAR`` bytes away) from the true one's length bin (bins
  ``LENGTH_BIN`` wide in ratio): true and distractor lengths are then alike in distribution, so
  a length preference alone scores chance.
  Metrics: ``acc`` and ``acc_norm`` (log-likelihood per byte).
- ``probe_<name>``: the synthetic probes of :mod:`training.probes` (their own generators)
  rendered one token per byte (``PROBES`` gives each probe's parameters and alphabet), asked
  zero-shot: the context is a probe sequence up to one scored position (picked at random per
  sequence), the target the byte to predict there. Metric: ``acc`` (the target is the argmax),
  comparable to the probes' token accuracy but measured in context, without training on the
  probe. The memorization probe is left out (it stores a table in the weights, nothing to ask
  zero-shot). Sequences are at most 128 bytes, so they fit the explore scale's window.
- ``shakespeare_bpb``: held-out passages (whole blank-line-separated blocks, ~0.8-1.6 KB) scored
  with ``loglikelihood_rolling``; metrics ``bits_per_byte``, ``byte_perplexity``,
  ``word_perplexity``.

Everything is a pure function of the corpus bytes and the seed, so running
``python -m training.lm_tasks.generate`` reproduces the shipped files byte for byte (a test
checks this). Rerun it after changing the corpus split or these rules.
"""

from __future__ import annotations

import hashlib
import math
import json
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
GENERATOR_VERSION = 2
SEED = 1234

N_LASTWORD = 400
N_CLOZE = 400
N_BPB = 160
MAX_CONTEXT = 512  # bytes of context before a last word
CLOZE_CONTEXT = 384  # bytes of context before a cloze sentence
MIN_CONTEXT = 160
CLOZE_MIN_LEN, CLOZE_MAX_LEN = 24, 160  # bytes of a cloze choice
N_DISTRACTORS = 3
LENGTH_BIN = 1.25  # ratio between the edges of a cloze length bin
FAR = 5000  # distractors from the same document must be at least this many bytes away
BPB_MIN, BPB_MAX = 768, 1536
MIN_SPEAKERS = 10

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ALNUM = _LETTERS + _LETTERS.upper() + "0123456789"
N_PROBE = 200
# probe task -> (training.probes generator, its parameters, alphabet: token id i is byte alphabet[i])
PROBES: dict[str, tuple[str, dict, str]] = {
    "probe_mqar": ("mqar", {"vocab_size": 62, "seq_len": 128, "num_kv_pairs": 8}, _ALNUM),
    "probe_noisy_recall": (
        "noisy_recall",
        {"vocab_size": 48, "seq_len": 128, "num_keys": 8, "noise_vocab": 12, "frac_noise": 0.2},
        _ALNUM[:48],
    ),
    "probe_fuzzy_recall": (
        "fuzzy_recall",
        {"vocab_size": 16, "seq_len": 96, "num_keys": 6, "key_len": 2, "value_len": 2},
        _LETTERS[:16],
    ),
    "probe_selective_copy": ("selective_copy", {"vocab_size": 28, "seq_len": 64, "num_tokens": 8}, ".|" + _LETTERS),
    "probe_compression": ("compression", {"vocab_size": 8, "seq_len": 64}, _LETTERS[:7] + "|"),
}

_STOPWORDS = frozenset(
    """that this with have your what will them then they thee thou there their these those from
    when which would shall should must were been more upon than such some here into were where
    hath doth thus thine like well make made come know good very much once only even""".split()
)
_SENTENCE_END = re.compile(r"""[.!?]['"\])]*$""")
_HEADING = re.compile(r"^[A-Z][A-Z0-9 .,'&-]*\.$")
_LAST_WORD = re.compile(r" ([A-Za-z]+)[^A-Za-z\s]*$")


@dataclass(frozen=True)
class _Line:
    start: int  # byte offset of the line in its document
    text: str  # without the newline


@dataclass(frozen=True)
class _Unit:
    """A run of speech lines from a line start to a line that ends a sentence."""

    doc: int
    start: int
    text: str  # lines rstripped, joined by "\n"
    first_in_block: bool
    last_start: int  # byte offset of the unit's last line


def _blocks(text: str) -> list[list[_Line]]:
    """Blank-line-separated blocks of lines, with offsets (the text is ASCII/UTF-8 decoded)."""
    blocks: list[list[_Line]] = []
    current: list[_Line] = []
    pos = 0
    for raw in text.split("\n"):
        if raw.strip():
            current.append(_Line(pos, raw))
        elif current:
            blocks.append(current)
            current = []
        pos += len(raw) + 1
    if current:
        blocks.append(current)
    return blocks


def _is_speech(line: str) -> bool:
    """A line of spoken text: has lower-case letters, is not a stage direction or heading."""
    s = line.strip()
    return bool(s) and any(c.islower() for c in s) and "[" not in s and "]" not in s and not _HEADING.match(s)


def _speech_lines(block: list[_Line]) -> list[_Line]:
    """The block's spoken lines, or [] if the block is not a clean speech (a speaker heading
    followed by speech lines, or only speech lines, as in the poems)."""
    lines = block[1:] if _HEADING.match(block[0].text.strip()) else block
    return lines if lines and all(_is_speech(ln.text) for ln in lines) else []


def _speeches(text: str) -> list[list[_Line]]:
    """The spoken lines of each clean speech block of a document. In a play (a document with
    at least ``MIN_SPEAKERS`` blocks opening with a speaker heading) only blocks that open with
    a heading count, which leaves out the front matter (cast lists and the like)."""
    blocks = _blocks(text)
    headed = [b for b in blocks if len(b) > 1 and _HEADING.match(b[0].text.strip())]
    chosen = headed if len(headed) >= MIN_SPEAKERS else blocks
    return [lines for lines in map(_speech_lines, chosen) if lines]


def _units(doc: int, text: str) -> list[_Unit]:
    units = []
    for lines in _speeches(text):
        run: list[_Line] = []
        first = True
        for ln in lines:
            run.append(ln)
            if _SENTENCE_END.search(ln.text.rstrip()):
                units.append(
                    _Unit(doc, run[0].start, "\n".join(x.text.rstrip() for x in run), first, run[-1].start)
                )
                run, first = [], False
    return units


def _context_start(text: str, end: int, max_bytes: int) -> int:
    """The first line start at or after ``end - max_bytes``."""
    lo = max(0, end - max_bytes)
    if lo == 0:
        return 0
    nl = text.find("\n", lo - 1)
    return end if nl < 0 or nl >= end else nl + 1


def _lastword_items(docs: Sequence[tuple[str, str]], rng: random.Random) -> list[dict]:
    candidates = []
    for d, (name, text) in enumerate(docs):
        for unit in _units(d, text):
            last_line = unit.text.rsplit("\n", 1)[-1]
            m = _LAST_WORD.search(last_line)
            if not m:
                continue
            word = m.group(1)
            if len(word) < 4 or word.lower() in _STOPWORDS:
                continue
            word_pos = unit.last_start + m.start(1)
            assert text[word_pos : word_pos + len(word)] == word and text[word_pos - 1] == " "
            start = _context_start(text, word_pos - 1, MAX_CONTEXT)
            context = text[start : word_pos - 1]
            if len(context) < MIN_CONTEXT:
                continue
            if not re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", context, re.IGNORECASE):
                continue
            candidates.append({"doc": name, "offset": word_pos, "context": context, "target": " " + word})
    picked = rng.sample(candidates, min(N_LASTWORD, len(candidates)))
    order = {name: i for i, (name, _) in enumerate(docs)}
    return sorted(picked, key=lambda it: (order[it["doc"]], it["offset"]))


def _length_bin(n: int) -> int:
    return int(math.log(n / CLOZE_MIN_LEN) / math.log(LENGTH_BIN))


def _cloze_items(docs: Sequence[tuple[str, str]], rng: random.Random) -> list[dict]:
    units = [u for d, (_, text) in enumerate(docs) for u in _units(d, text)]
    pool = sorted(
        (u for u in units if CLOZE_MIN_LEN <= len(u.text) <= CLOZE_MAX_LEN and not u.text[0].isspace()),
        key=lambda u: (len(u.text), u.doc, u.start),
    )
    bins: dict[int, list[_Unit]] = {}
    for u in pool:
        bins.setdefault(_length_bin(len(u.text)), []).append(u)
    targets = [u for u in pool if not u.first_in_block]
    targets.sort(key=lambda u: (u.doc, u.start))
    rng.shuffle(targets)
    items = []
    for true in targets:
        if len(items) >= N_CLOZE:
            break
        text = docs[true.doc][1]
        start = _context_start(text, true.start, CLOZE_CONTEXT)
        context = text[start : true.start]
        if len(context) < MIN_CONTEXT:
            continue
        same_bin = bins[_length_bin(len(true.text))]
        seen = {true.text}
        distractors: list[str] = []
        for _ in range(200):
            if len(distractors) == N_DISTRACTORS:
                break
            u = same_bin[rng.randrange(len(same_bin))]
            if u.text in seen or (u.doc == true.doc and abs(u.start - true.start) < FAR):
                continue
            seen.add(u.text)
            distractors.append(u.text)
        if len(distractors) < N_DISTRACTORS:
            continue
        choices = distractors + [true.text]
        rng.shuffle(choices)
        items.append(
            {
                "doc": docs[true.doc][0],
                "offset": true.start,
                "context": context,
                "choices": choices,
                "label": choices.index(true.text),
            }
        )
    order = {name: i for i, (name, _) in enumerate(docs)}
    return sorted(items, key=lambda it: (order[it["doc"]], it["offset"]))


def _bpb_items(docs: Sequence[tuple[str, str]], rng: random.Random) -> list[dict]:
    chunks = []
    for name, text in docs:
        blocks = _blocks(text)
        i = 0
        while i < len(blocks):
            j = i
            while j < len(blocks):
                end = blocks[j][-1].start + len(blocks[j][-1].text)
                j += 1
                if end - blocks[i][0].start >= BPB_MIN:
                    break
            start = blocks[i][0].start
            passage = text[start:end]
            if BPB_MIN <= len(passage) <= BPB_MAX:
                chunks.append({"doc": name, "offset": start, "text": passage})
            i = j
    picked = rng.sample(chunks, min(N_BPB, len(chunks)))
    order = {name: i for i, (name, _) in enumerate(docs)}
    return sorted(picked, key=lambda it: (order[it["doc"]], it["offset"]))


def _probe_items(task: str, seed: int) -> list[dict]:
    """``N_PROBE`` zero-shot items of one probe (see ``PROBES``) from its own generator."""
    import torch

    from training.probes import GENERATORS

    name, params, alphabet = PROBES[task]
    if len(alphabet) < params["vocab_size"]:
        raise ValueError(f"{task}: alphabet shorter than the vocabulary")
    g = torch.Generator().manual_seed(seed)
    inputs, targets = GENERATORS[name](N_PROBE, g, **params)
    rng = random.Random(seed)
    items = []
    for i, (x, y) in enumerate(zip(inputs.tolist(), targets.tolist())):
        scored = [p for p, t in enumerate(y) if t >= 0]
        if not scored:
            continue
        p = rng.choice(scored)
        items.append(
            {
                "id": i,
                "position": p,
                "context": "".join(alphabet[t] for t in x[: p + 1]),
                "target": alphabet[y[p]],
            }
        )
    return items


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def generate_task_data(
    out_dir: str | Path | None = None,
    documents: Sequence[tuple[str, bytes]] | None = None,
    seed: int = SEED,
) -> dict[str, Path]:
    """Write the task jsonl files (and ``manifest.json``) into ``out_dir`` (default: this folder).

    ``documents`` are ``(name, bytes)`` pairs, by default ``load_corpus().val_documents``. The
    output depends only on them and ``seed``. Returns ``{task name: jsonl path}``.
    """
    if documents is None:
        from training.data import load_corpus

        documents = load_corpus().val_documents
    if not documents:
        raise ValueError("no held-out documents to generate task data from")
    out = Path(out_dir) if out_dir is not None else TASK_DIR
    out.mkdir(parents=True, exist_ok=True)
    docs = [(name, data.decode("utf-8", errors="replace").replace("\r\n", "\n")) for name, data in documents]
    makers = {
        "shakespeare_lastword": _lastword_items,
        "shakespeare_cloze": _cloze_items,
        "shakespeare_bpb": _bpb_items,
    }
    paths: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for i, (task, make) in enumerate(makers.items()):
        rows = make(docs, random.Random(seed * 1000 + i))
        if not rows:
            raise ValueError(f"the held-out documents yield no items for {task}")
        paths[task] = out / f"{task}.jsonl"
        _write_jsonl(paths[task], rows)
        counts[task] = len(rows)
    for i, task in enumerate(PROBES):
        rows = _probe_items(task, seed * 1000 + 100 + i)
        if not rows:
            raise ValueError(f"the probe generator yields no scored positions for {task}")
        paths[task] = out / f"{task}.jsonl"
        _write_jsonl(paths[task], rows)
        counts[task] = len(rows)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "counts": counts,
        "documents": {name: hashlib.sha256(data).hexdigest() for name, data in documents},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.lm_tasks.generate [OUT_DIR]``: (re)generate the task data."""
    args = list(sys.argv[1:] if argv is None else argv)
    paths = generate_task_data(args[0] if args else None)
    for task, path in paths.items():
        n = sum(1 for _ in open(path, encoding="utf-8"))
        print(f"{task}: {n} items -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
