"""Every shipped cognition entry is valid, and the set covers the reading list."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.schema import (
    LEVERS, MAX_WORDS, MIN_WORDS, TEXT_FIELDS, Entry, EntryError, entry_files, entry_filename,
    load_entries, load_entry, reading_list, word_count,
)

FILES = entry_files()

#: Reading-list items that are not about architectures (surveys, fine-tuning, tooling, blog
#: duplicates of a paper); the coverage target counts the rest.
NON_ARCHITECTURE = {
    "arXiv:2211.17192",  # speculative decoding (inference procedure)
    "arXiv:2305.14314",  # QLoRA (fine-tuning)
    "arXiv:2403.03507",  # GaLore (optimiser memory)
    "arXiv:1910.03771",  # HuggingFace Transformers library
    "arXiv:2009.06732", "arXiv:2106.07139", "arXiv:2203.14263", "arXiv:2303.18223",
    "arXiv:2310.12321", "arXiv:2311.12351", "arXiv:2402.06196", "arXiv:2410.20011",
    "arXiv:2506.06708",  # surveys
    "databricks.com/blog/introducing-dbrx-new-state-art-open-llm",
    "sustcsonglin.github.io/blog/2024/deltanet-2",  # same content as arXiv:2406.06484
}


def test_there_are_entries() -> None:
    assert len(FILES) >= 1


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_entry_is_valid(path: Path) -> None:
    e = load_entry(path)
    assert isinstance(e, Entry)
    assert path.name == entry_filename(e.id)
    for f in TEXT_FIELDS:
        assert MIN_WORDS <= word_count(getattr(e, f)) <= MAX_WORDS
    assert e.levers and set(e.levers) <= set(LEVERS)
    assert set(e.expected_effects) == {"probes", "loss"}


def test_no_duplicate_ids_and_related_ids_resolve() -> None:
    entries = load_entries()
    ids = [e.id for e in entries]
    assert len(ids) == len(set(ids))
    known = set(ids)
    dangling = [(e.id, r) for e in entries for r in e.related if r not in known]
    assert not dangling, f"related ids without an entry: {dangling}"


def test_covers_reading_list_architectures() -> None:
    ids = {e.id for e in load_entries()}
    arch = [rid for rid, _ in reading_list() if rid not in NON_ARCHITECTURE]
    covered = [rid for rid in arch if rid in ids]
    missing = sorted(set(arch) - ids)
    assert len(covered) >= 80, f"{len(covered)} of {len(arch)} covered; missing: {missing}"


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


GOOD = Path(__file__).resolve().parents[1] / "corpus" / "entries" / "2006.16236.toml"


def test_validation_errors_name_file_and_field(tmp_path: Path) -> None:
    text = GOOD.read_text(encoding="utf-8")
    p = _write(tmp_path, "2006.16236.toml", text.replace('"normalization"', '"gating_magic"'))
    with pytest.raises(EntryError, match=r"2006\.16236\.toml: field 'levers': unknown lever 'gating_magic'"):
        load_entry(p)
    p = _write(tmp_path, "2006.16236.toml", text.replace("year = 2020", 'year = "2020"'))
    with pytest.raises(EntryError, match=r"field 'year'"):
        load_entry(p)
    p = _write(tmp_path, "2006.16236.toml", text.replace("scenario = '''", "scenario = '''short '''\nxx = '''"))
    with pytest.raises(EntryError, match=r"field '(scenario|xx)'"):
        load_entry(p)
    p = _write(tmp_path, "wrong-name.toml", text)
    with pytest.raises(EntryError, match=r"must be named '2006\.16236\.toml'"):
        load_entry(p)
    p = _write(tmp_path, "2006.16236.toml", text.replace("[expected_effects]\nprobes", "[expected_effects]\nprobez"))
    with pytest.raises(EntryError, match=r"expected_effects"):
        load_entry(p)
    p = _write(tmp_path, "2006.16236.toml", "id = [unclosed")
    with pytest.raises(EntryError, match=r"not valid TOML"):
        load_entry(p)


def test_second_file_with_same_id_rejected(tmp_path: Path) -> None:
    """File names are a function of the id, so a second file carrying an existing id is caught
    by the file-name rule, and load_entries reports it with every other problem."""
    text = GOOD.read_text(encoding="utf-8")
    d = tmp_path / "entries"
    d.mkdir()
    _write(d, "2006.16236.toml", text)
    _write(d, "copy.toml", text)
    _write(d, "bad.toml", "id = 3")
    with pytest.raises(EntryError) as info:
        load_entries(d)
    msg = str(info.value)
    assert "copy.toml: field 'id': file must be named '2006.16236.toml'" in msg
    assert "bad.toml" in msg and len(msg.splitlines()) == 2


def test_entry_filename_slugs_non_arxiv() -> None:
    assert entry_filename("arXiv:2006.16236") == "2006.16236.toml"
    assert entry_filename("sustcsonglin.github.io/blog/2024/deltanet-2") == "sustcsonglin.github.io-blog-2024-deltanet-2.toml"
