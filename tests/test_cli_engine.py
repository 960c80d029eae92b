"""Tests of ``asiarch-tui eval`` and ``asiarch-tui baselines`` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from asiarch_tui.cli import app
from cli_helpers import cli_text
from engine_helpers import GOOD_SOURCE, NAN_SOURCE, NO_MIXER_SOURCE, SYNTAX_ERROR_SOURCE, WRONG_SHAPE_SOURCE, tiny_scale
from training import scales

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


@pytest.fixture(autouse=True)
def tiny_scales(monkeypatch):
    monkeypatch.setitem(scales.SCALES, "probe", tiny_scale("probe"))
    monkeypatch.setitem(scales.SCALES, "explore", tiny_scale("explore"))


def _write(tmp_path, source):
    path = tmp_path / "cand.py"
    path.write_text(source)
    return str(path)


def test_eval_table_and_json(tmp_path):
    path = _write(tmp_path, GOOD_SOURCE)
    res = runner.invoke(app, ["eval", path, "--scale", "explore"])
    assert res.exit_code == 0, res.output
    assert "val_bpb" in res.stdout and "probe mqar" in res.stdout
    res = runner.invoke(app, ["eval", path, "--scale", "explore", "-v"])
    assert res.exit_code == 0 and "[mqar] step" in res.stderr and "[lm] step" in res.stderr
    res = runner.invoke(app, ["eval", path, "--scale", "probe", "--seed", "2", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["status"] == "ok" and m["seed"] == 2 and m["val_bpb"] is None and len(m["probes"]) == 6


@pytest.mark.parametrize(
    "source,code,needle",
    [
        (None, 2, "does not exist"),
        (SYNTAX_ERROR_SOURCE, 1, "yntax"),
        (NO_MIXER_SOURCE, 1, "Mixer"),
        (WRONG_SHAPE_SOURCE, 1, "shape"),
        (NAN_SOURCE, 1, "non-finite"),
    ],
    ids=["missing", "syntax", "no-mixer", "shape", "nan"],
)
def test_eval_bad_input_one_paragraph(tmp_path, source, code, needle):
    path = str(tmp_path / "missing.py") if source is None else _write(tmp_path, source)
    res = runner.invoke(app, ["eval", path, "--scale", "probe"])
    assert res.exit_code == code
    assert needle in res.stderr and "Traceback" not in res.output
    assert res.stderr.startswith("Error: ") and res.stderr.strip().count("\n") == 0  # one paragraph


def test_eval_unknown_scale(tmp_path):
    res = runner.invoke(app, ["eval", _write(tmp_path, GOOD_SOURCE), "--scale", "huge"])
    assert res.exit_code == 2 and "'huge' is not one of 'demo', 'probe', 'explore'" in cli_text(res)


def test_gpu_scale_refused_without_gpu(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = runner.invoke(app, ["eval", _write(tmp_path, GOOD_SOURCE), "--scale", "verify"])
    assert res.exit_code == 2 and "GPU" in res.stderr and "--force" in res.stderr


def test_baselines_ranked(tmp_path):
    out = tmp_path / "b.json"
    res = runner.invoke(app, ["baselines", "--scale", "explore", "--seeds", "2", "--only", "deltanet,linear_attention",
                              "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ranked = json.loads(res.stdout)
    assert [r["name"] for r in ranked] == sorted(["deltanet", "linear_attention"],
                                                 key=lambda n: next(r["val_bpb"] for r in ranked if r["name"] == n))
    assert all(len(r["runs"]) == 2 and r["status"] == "ok" for r in ranked)
    assert json.loads(out.read_text()) == ranked
    res = runner.invoke(app, ["baselines", "--scale", "probe", "--only", "gla"])
    assert res.exit_code == 0 and "gla" in res.stdout and "Literature order" in res.stdout
    res = runner.invoke(app, ["baselines", "--only", "mamba"])
    assert res.exit_code == 2 and "unknown reference mixer(s) mamba; choose from: softmax_attention" in cli_text(res)


def test_eval_of_a_design_non_causal_after_training_is_rejected(tmp_path, monkeypatch):
    """The post-training causality check runs in every evaluation: a design whose future read arms
    only during training is rejected, exit 1, with the reason; the JSON keeps the check's record."""
    from pathlib import Path

    monkeypatch.setitem(scales.SCALES, "probe", tiny_scale("probe", probe_steps=5))
    path = str(Path(__file__).parent / "hostile" / "leak_after_training.py")
    res = runner.invoke(app, ["eval", path, "--scale", "probe", "--json"])
    assert res.exit_code == 1, res.output
    assert "was rejected: non-causal (found after training): the trained " in res.stderr, res.stderr
    m = json.loads(res.stdout)
    assert m["status"] == "rejected" and m["causality_after_training"]["violation"] == m["stop_reason"]


def test_eval_guard_ends_with_exit_3_and_partial_json(tmp_path, monkeypatch):
    """A CPU cap the run exceeds: too_slow, exit 3 (not 1: the file is fine), the metrics
    reached so far printed as JSON and marked partial, no suite mean. (The evaluation runs in the
    sandbox, so the cap is real CPU time: 1 s against thousands of steps.)"""
    from dataclasses import replace

    s = tiny_scale("probe")
    # a short first probe finishes well inside the cap; the second cannot (20,000 steps)
    s = replace(s, probes=(replace(s.probes[0], steps=10),) + tuple(replace(p, steps=20000) for p in s.probes[1:]))
    monkeypatch.setitem(scales.SCALES, "probe", s)
    res = runner.invoke(app, ["eval", _write(tmp_path, GOOD_SOURCE), "--scale", "probe", "--json",
                              "--cpu-limit", "3"])
    assert res.exit_code == 3, res.output
    m = json.loads(res.stdout)
    assert m["status"] == "too_slow" and m["partial"] is True and m["probe_mean"] is None
    assert 0 < m["steps_done"] < m["steps_planned"]
    assert "too_slow" in res.stderr and "partial" in res.stderr
    # the table says partial too, and shows the partial mean labelled as such
    res = runner.invoke(app, ["eval", _write(tmp_path, GOOD_SOURCE), "--scale", "probe", "--cpu-limit", "3"])
    assert res.exit_code == 3 and "partial" in res.stdout and "too slow" in res.stdout
    res = runner.invoke(app, ["eval", _write(tmp_path, GOOD_SOURCE), "--scale", "probe", "--cpu-limit", "-1"])
    assert res.exit_code == 2 and "must be a positive number of seconds" in cli_text(res)


def test_baselines_line_shows_the_stop_reason_literally(tmp_path, monkeypatch):
    """"[too_slow: ...]" after a run must not be eaten as rich markup."""
    from training import guards as G

    ticks = iter(range(10**6))
    monkeypatch.setattr(G, "cpu_clock", lambda: float(next(ticks)))
    monkeypatch.setattr(G.Guards, "relative_to", classmethod(lambda cls, *a, **k: cls(cpu_limit_s=5.0)))
    res = runner.invoke(app, ["baselines", "--scale", "probe", "--only", "deltanet"])
    assert "[too_slow: too slow: " in res.stderr, res.output
    assert "partial:" in res.stderr and res.exit_code == 3
