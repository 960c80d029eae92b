"""asiarch-tui init / status / show / reindex / log."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import archive.lab as lab_mod
from archive.embed import HashEmbedder
from archive.lab import Lab, seed_source
from archive.lineage import lineage_tree, sparkline
from archive.synth import BASE_CODE, grow
from asiarch_tui import cli_archive

runner = CliRunner()


def flat(res) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(res.output.split())


@pytest.fixture()
def app() -> typer.Typer:
    a = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    cli_archive.register(a)
    return a


@pytest.fixture()
def grown(tmp_path: Path) -> Path:
    lab = Lab.init(tmp_path / "lab", seed_code=BASE_CODE, embedder=HashEmbedder())
    grow(lab, 30, random.Random(2))
    lab.close()
    return tmp_path / "lab"


def test_init_then_errors(app, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lab_mod, "seed_source", lambda: BASE_CODE)
    monkeypatch.setenv("ASIARCH_INIT_NOVELTY", "0")
    res = runner.invoke(app, ["init", str(tmp_path / "new")])
    assert res.exit_code == 0, flat(res)
    assert "created lab" in flat(res) and "exp/0000-deltanet" in flat(res)
    assert (tmp_path / "new" / "asiarch.toml").is_file()
    res = runner.invoke(app, ["init", str(tmp_path / "new")])
    assert res.exit_code == 1 and "already a lab" in flat(res) and "Traceback" not in flat(res)
    res = runner.invoke(app, ["status", "--lab", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "is not a lab" in flat(res)
    cfg = tmp_path / "new" / "asiarch.toml"
    cfg.write_text(cfg.read_text().replace('mode = "autonomous"', 'mode = "turbo"'))
    res = runner.invoke(app, ["status", "--lab", str(tmp_path / "new")])
    assert res.exit_code == 1 and "asiarch.toml: loop.mode: Input should be 'autonomous' or 'supervised' (got 'turbo')" \
        in flat(res)


def test_status_show_log_reindex(app, grown: Path) -> None:
    res = runner.invoke(app, ["status", "--lab", str(grown), "-n", "5"])
    assert res.exit_code == 0, flat(res)
    assert "31 experiments" in flat(res) and "best:" in flat(res) and "fitness" in flat(res)
    assert any(ch in flat(res) for ch in "▁▂▃▄▅▆▇█")
    res = runner.invoke(app, ["show", "1", "--lab", str(grown)])
    assert res.exit_code == 0, flat(res)
    assert "class Mixer" in flat(res) and "motivation" in flat(res) and "0001" in flat(res)
    res = runner.invoke(app, ["show", "0000", "--lab", str(grown), "--json"])
    assert res.exit_code == 0 and '"id": "0000"' in flat(res)
    res = runner.invoke(app, ["show", "999", "--lab", str(grown)])
    assert res.exit_code == 1 and "no experiment" in flat(res)
    res = runner.invoke(app, ["log", "--lab", str(grown)])
    assert res.exit_code == 0, flat(res)
    assert "0000" in res.output and "0030" in res.output and "best" in res.output
    res = runner.invoke(app, ["reindex", "--lab", str(grown), "--no-novelty"])
    assert res.exit_code == 0 and "31 experiments" in flat(res)


def test_lineage_tree_structure() -> None:
    docs = [{"id": f"{i:04d}", "name": f"n{i}", "status": "accepted", "fitness": i / 10} for i in range(7)]
    # 0 -> 1 -> 2 -> {3, 4}; 4 -> 5; 0 -> 6
    children = {None: ["0000"], "0000": ["0001", "0006"], "0001": ["0002"], "0002": ["0003", "0004"],
                "0004": ["0005"]}
    tree = lineage_tree(docs, children, best_id="0006")
    root = tree.children[0]
    assert root.label.plain.startswith("0000")
    first, second = root.children
    assert first.label.plain.splitlines()[0].startswith("0001") and "↳ 0002" in first.label.plain
    assert [c.label.plain.split()[0] for c in first.children] == ["0003", "0004"]
    assert "↳ 0005" in first.children[1].label.plain
    assert "★ best" in second.label.plain
    cut = lineage_tree(docs, children, max_depth=2)
    assert "2 branches, 3 experiments" in cut.children[0].children[0].children[0].label.plain
    assert sparkline([0.0, None, 1.0]) == "▁·█"


def test_seed_comes_from_the_reference_mixer_registry() -> None:
    mixers = pytest.importorskip("training.mixers")
    if not hasattr(mixers, "REFERENCE_MIXERS"):
        pytest.skip("training.mixers has no registry yet")
    src = seed_source()
    assert "class Mixer" in src and "delta" in src.lower()
