"""``asiarch-tui reproduce`` on a lab made here: the seed measured on 3 seeds in the sandbox at a
tiny scale, re-run from its commit (exit 0), and a copy whose recorded metrics were altered
(exit 1)."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from agents.loop import Loop
from agents.repro import compare
from asiarch_tui.cli import app
from tests.loop_helpers import make_lab, tiny_scale

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured_lab(tmp_path_factory):
    path = tmp_path_factory.mktemp("repro") / "lab"
    lab = make_lab(path)
    loop = Loop(lab, scale=tiny_scale(), experiments=1, baselines=())
    assert loop.measure_seed() is not None, loop.yardstick_missing()  # the seed on seeds 0, 1, 2
    loop.ensure_seed_measured()
    loop.bus.close()
    lab.close()
    return path


def test_the_measured_seed_is_best_with_seeds_and_an_interval(measured_lab):
    res = CliRunner().invoke(app, ["show", "best", "--lab", str(measured_lab), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["extra"]["measures"] == "0000"
    assert len(rec["metrics"]["seeds"]) == 3 and [s["seed"] for s in rec["metrics"]["seeds"]] == [0, 1, 2]
    lo, hi = rec["fitness_interval"]
    assert lo <= rec["fitness"] <= hi and len(rec["fitness_seeds"]) == 3
    assert rec["promotion"]["promoted"] and rec["fitness_components"]["judge"]["judge"] == "builtin"
    env = rec["reproduce"]
    assert env["scale"]["probes"][0]["task"] == "mqar" and env["seeds"] == [0, 1, 2] and env["threads"] >= 1
    assert env["code_version"]["training_sha256"] and env["device"] == "cpu" and env["dtype"] == "float32"
    assert env["lab_config"]["loop"]["seeds"] == 3


def test_reproduce_untouched_record_exits_0(measured_lab):
    res = CliRunner().invoke(app, ["reproduce", "best", "--lab", str(measured_lab), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] and out["seeds"] == [0, 1, 2]
    pm = next(m for m in out["metrics"] if m["metric"] == "probe_mean")
    assert pm["within_tolerance"] and all(x["close"] for x in pm["per_seed"])


def test_reproduce_altered_record_exits_1(measured_lab):
    from archive.lab import Lab

    lab = Lab.open(measured_lab)
    rec = lab.store.get("0001")
    fake = copy.deepcopy(rec)
    fake.id, fake.slug, fake.parent = lab.store.next_id(), "", "0001"
    fake.__post_init__()
    fake.promotion = {}
    for e in fake.metrics["seeds"]:  # a record whose metrics were "improved" by hand
        e["probe_mean"] = min(1.0, e["probe_mean"] + 0.3)
        e["probes"] = {k: min(1.0, v + 0.3) for k, v in e["probes"].items()}
    fake.metrics["probe_mean"] = sum(e["probe_mean"] for e in fake.metrics["seeds"]) / 3
    lab.commit(fake)
    lab.close()
    res = CliRunner().invoke(app, ["reproduce", fake.id, "--lab", str(measured_lab), "--seeds", "1"])
    assert res.exit_code == 1, res.output
    assert "not reproduced" in res.stdout


def test_compare_rules():
    recorded = {"status": "ok", "seeds": [
        {"seed": 0, "status": "ok", "probe_mean": 0.50, "probes": {"mqar": 0.5}},
        {"seed": 1, "status": "ok", "probe_mean": 0.60, "probes": {"mqar": 0.6}},
        {"seed": 2, "status": "ok", "probe_mean": 0.55, "probes": {"mqar": 0.55}}]}
    # other seeds, mean inside the recorded interval: reproduced
    inside = compare(recorded, [{"seed": 7, "status": "ok", "probe_mean": 0.56, "probes": {"mqar": 0.56}}])
    assert all(c.ok and c.within_interval and not c.per_seed for c in inside)
    # the same seed within 1%: reproduced even outside the interval of a one-seed record
    one = {"status": "ok", "seed": 0, "probe_mean": 0.5, "probes": {"mqar": 0.5}}
    assert all(c.ok for c in compare(one, [{"seed": 0, "status": "ok", "probe_mean": 0.503, "probes": {"mqar": 0.503}}]))
    bad = compare(one, [{"seed": 0, "status": "ok", "probe_mean": 0.52, "probes": {"mqar": 0.52}}])
    assert not any(c.ok for c in bad)
    far = compare(recorded, [{"seed": 0, "status": "ok", "probe_mean": 0.9, "probes": {"mqar": 0.9}}])
    assert not far[0].ok and far[0].sigmas == pytest.approx((0.9 - 0.55) / 0.05)
