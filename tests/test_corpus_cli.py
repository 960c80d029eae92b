"""``asiarch-tui corpus search/show/list/check`` (run through typer's test runner)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from asiarch_tui.cli_corpus import register
from cli_helpers import cli_text

runner = CliRunner()


@pytest.fixture()
def app(tmp_path, monkeypatch) -> typer.Typer:
    monkeypatch.setenv("ASIARCH_CACHE", str(tmp_path / "cache"))
    a = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @a.callback()
    def _root() -> None:  # keep "corpus" as a sub-command
        """test app"""

    register(a)
    return a


def test_search_prints_ranked_table(app: typer.Typer) -> None:
    r = runner.invoke(app, ["corpus", "search", "Nyström landmarks pseudo-inverse", "-k", "3",
                            "--embedder", "hash"])
    assert r.exit_code == 0, r.output
    assert "2102.03902" in r.output and "score" in r.output
    r = runner.invoke(app, ["corpus", "search", "Nyström landmarks pseudo-inverse", "-k", "3",
                            "--embedder", "hash", "--json"])
    rows = json.loads(r.stdout)
    assert len(rows) == 3 and rows[0]["id"] == "arXiv:2102.03902"
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]


def test_search_lever_filter_and_bad_lever(app: typer.Typer) -> None:
    r = runner.invoke(app, ["corpus", "search", "forget old tokens", "--lever", "delta_rule",
                            "--embedder", "hash", "--json", "-k", "5"])
    assert r.exit_code == 0
    assert all("delta_rule" in row["levers"] for row in json.loads(r.stdout))
    r = runner.invoke(app, ["corpus", "search", "x", "--lever", "gating_magic", "--embedder", "hash"])
    assert r.exit_code == 2  # a usage error listing the levers
    assert "'gating_magic' is not one of 'feature_map', 'decay'" in cli_text(r) and "Traceback" not in r.output


def test_show_and_unknown_id(app: typer.Typer) -> None:
    r = runner.invoke(app, ["corpus", "show", "2006.16236"])
    assert r.exit_code == 0
    assert "Transformers are RNNs" in r.output and "Scenario" in r.output and "feature_map" in r.output
    r = runner.invoke(app, ["corpus", "show", "arXiv:2006.16236", "--json"])
    assert json.loads(r.stdout)["year"] == 2020
    r = runner.invoke(app, ["corpus", "show", "1234.5678"])
    assert r.exit_code == 1 and "no cognition entry" in r.output


def test_list_and_check(app: typer.Typer) -> None:
    r = runner.invoke(app, ["corpus", "list", "--lever", "delta_rule"])
    assert r.exit_code == 0 and "delta_rule" in r.output
    r = runner.invoke(app, ["corpus", "check"])
    assert r.exit_code == 0 and "entries valid" in r.output


def test_index_builds_then_uses_cache(app: typer.Typer) -> None:
    r = runner.invoke(app, ["corpus", "index", "--embedder", "hash"])
    assert r.exit_code == 0 and "embedded now" in r.output
    r = runner.invoke(app, ["corpus", "index", "--embedder", "hash"])
    assert r.exit_code == 0 and "cache" in r.output


def test_unknown_embedder_is_one_clear_error(app: typer.Typer) -> None:
    r = runner.invoke(app, ["corpus", "search", "recall fails", "--embedder", "nosuch:thing"])
    assert r.exit_code == 1
    assert "unknown embedder" in r.output and "Traceback" not in r.output
