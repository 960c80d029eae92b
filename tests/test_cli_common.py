"""The CLI's shared rules: how a command is told its lab, the one error path, the choices."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from archive.embed import HashEmbedder
from archive.lab import Lab
from archive.synth import BASE_CODE, grow
from asiarch_tui.cli import app
from asiarch_tui.cli_common import ScaleName
from cli_helpers import cli_text

runner = CliRunner()


@pytest.fixture()
def lab(tmp_path: Path) -> Path:
    made = Lab.init(tmp_path / "lab", seed_code=BASE_CODE, embedder=HashEmbedder())
    grow(made, 3, random.Random(1))
    made.close()
    return tmp_path / "lab"


def test_scale_choices_are_the_training_scales() -> None:
    from training.scales import SCALES

    assert [s.value for s in ScaleName] == list(SCALES)


def test_every_command_on_a_lab_takes_it_both_ways() -> None:
    """A command with a positional LAB also takes --lab/-l, and the other way round."""
    group = typer.main.get_command(app)
    seen = 0
    for name, cmd in group.commands.items():
        params = {p.name: p for p in cmd.params}
        if "lab" in params or "lab_opt" in params:
            seen += 1
            assert "lab" in params and "lab_opt" in params, name
            assert params["lab"].param_type_name == "argument" and not params["lab"].required, name
            assert set(params["lab_opt"].opts) == {"--lab", "-l"}, name
    # tui, init, run, status, show, reindex, log, report, reproduce, verify, eval, baselines
    assert seen == 12


def test_the_lab_as_argument_option_env_or_default(lab: Path, tmp_path: Path, monkeypatch) -> None:
    for args in (["status", str(lab)], ["status", "--lab", str(lab)], ["status", "-l", str(lab)],
                 ["show", "1", str(lab), "--no-code"], ["show", "1", "--lab", str(lab), "--no-code"],
                 ["log", str(lab)], ["log", "-l", str(lab)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
        assert "0001" in res.output, args
    monkeypatch.setenv("ASIARCH_LAB", str(lab))
    monkeypatch.chdir(tmp_path / "lab" / "archive")  # no ./lab here: the variable names it
    res = runner.invoke(app, ["status"])
    assert res.exit_code == 0 and "4 experiments" in cli_text(res)
    monkeypatch.delenv("ASIARCH_LAB")
    monkeypatch.chdir(tmp_path)  # ./lab
    res = runner.invoke(app, ["status"])
    assert res.exit_code == 0 and "4 experiments" in cli_text(res)
    monkeypatch.chdir(lab)  # no ./lab
    res = runner.invoke(app, ["status"])
    assert res.exit_code == 1 and f"Error: {lab / 'lab'} is not a lab" in cli_text(res)


def test_the_lab_given_twice_is_a_usage_error(lab: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["status", str(lab), "--lab", str(tmp_path / "other")])
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: the lab is given twice") and res.stderr.count("\n") == 1
    assert runner.invoke(app, ["status", str(lab), "--lab", str(lab)]).exit_code == 0  # the same twice is fine


def test_a_bad_choice_lists_the_allowed_values(lab: Path) -> None:
    res = runner.invoke(app, ["reindex", str(lab), "--scale", "huge"])
    assert res.exit_code == 2
    assert "'huge' is not one of 'demo', 'probe', 'explore', 'verify-mini', 'verify'" in cli_text(res)
    res = runner.invoke(app, ["run", str(lab), "--headless", "--mode", "fast"])
    assert res.exit_code == 2 and "'fast' is not one of 'autonomous', 'supervised'" in cli_text(res)
