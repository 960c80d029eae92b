"""``asiarch-tui report``: the figures and the HTML page, rendered from a synthetic lab."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archive.config import LabConfig
from archive.embed import HashEmbedder
from archive.lab import Lab
from archive.record import SEED_ID
from archive.synth import synthetic_record
from asiarch_tui.report import FIGURES, build_report, collect, influences, lineage_layout, winners_lines

COGNITION = ["arXiv:2102.11174", "arXiv:2406.06484", "arXiv:2412.06464", "arXiv:2312.06635"]
BASELINES = {
    "deltanet": {"status": "ok", "probe_mean": 0.42, "val_bpb": None, "mixer_params": 16000,
                 "probes": {"mqar": 0.55, "copy": 0.30}},
    "linear_attention": {"status": "ok", "probe_mean": 0.21, "mixer_params": 12000,
                         "probes": {"mqar": 0.12, "copy": 0.30}},
    "softmax_attention": {"status": "ok", "probe_mean": 0.80, "mixer_params": 16000,
                          "probes": {"mqar": 0.95, "copy": 0.65}},
    "gla": {"status": "error", "error": "not measured"},
}


def synthetic_lab(path: Path, n: int = 60, seed: int = 3) -> Lab:
    """A probe-scale lab with a measured seed, ``n`` synthetic experiments (parents from the
    candidate set, operators, cognition entries) and cached baselines."""
    cfg = LabConfig()
    cfg.loop.scale = "probe"
    lab = Lab.init(path, config=cfg, embedder=HashEmbedder())
    rng = random.Random(seed)
    seed_rec = lab.store.get(SEED_ID)
    measured = dataclasses.replace(seed_rec, id="", parent=SEED_ID, fitness=0.5, metrics=BASELINES["deltanet"],
                                   fitness_components={"s_loss": 0.5, "s_score": 0.5, "s_judge": 0.5,
                                                       "measured": {"s_loss": False, "s_score": True,
                                                                    "s_judge": False}},
                                   extra={"measures": SEED_ID}, scale="probe")
    lab.commit(measured)
    for _ in range(n):
        parent = lab.candidates.sample_parent(rng)
        refs = [r.id for r in lab.candidates.sample_references(rng, exclude={parent.id})]
        rec = synthetic_record(rng, "", parent, refs)
        rec.cognition = rng.sample(COGNITION, rng.randint(0, 2))
        if rng.random() < 0.3:
            rec.operators = rec.operators + ["add_short_conv"]
        lab.commit(rec)
    (path / "baselines").mkdir(exist_ok=True)
    (path / "baselines" / "probe.json").write_text(json.dumps(BASELINES))
    return lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    lab = synthetic_lab(tmp_path_factory.mktemp("report") / "lab")
    yield lab
    lab.close()


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_report_renders_every_figure_and_the_page(lab: Lab, tmp_path: Path) -> None:
    rep = build_report(lab, tmp_path / "out")
    assert set(rep.figures) == set(FIGURES)
    for name, path in rep.figures.items():
        w, h = _png_size(path)
        assert w > 500 and h > 300, name
        assert path.stat().st_size > 15_000, f"{name} looks empty"
    page = rep.html.read_text()
    for name in FIGURES:
        assert f"src='{name}.png'" in page
    data = collect(lab)
    top = data.top()
    assert len(top) == 10
    # the table lists the top 10 in fitness order, then the baselines that were measured
    positions = [page.index(f"<code>{r.id}</code>") for r in top]
    assert positions == sorted(positions)
    assert "baseline: softmax_attention" in page and "baseline: gla" not in page
    assert rep.best_id == lab.store.best().id == top[0].id
    assert rep.counts["total"] == len(lab.store)


def test_report_data_is_what_the_archive_holds(lab: Lab) -> None:
    data = collect(lab)
    assert data.scale == "probe" and data.seed_fitness == 0.5
    assert set(data.baselines) == {"deltanet", "linear_attention", "softmax_attention"}
    fits = [r.fitness for r in data.top()]
    assert fits == sorted(fits, reverse=True)
    assert all(r.status == "accepted" for r in data.top())
    lines = winners_lines(data)
    by_id = data.by_id()
    ids = {x.id for x in lines}
    for r in data.top():  # every winner's ancestry is in its lines (the seed and its measured copy excluded)
        cur = r
        while cur.parent is not None:
            assert (cur.id in ids) != (cur.extra.get("measures") == SEED_ID)
            cur = by_id[cur.parent]
    assert SEED_ID not in ids
    inf = influences(data)
    assert sum(inf["ops_w"].values()) == sum(len(r.operators) for r in lines)
    assert set(inf["cog_w"]) <= set(COGNITION)


def test_lineage_layout_puts_parents_over_their_children() -> None:
    parents = {"0000": None, "0001": "0000", "0002": "0000", "0003": "0001", "0004": "0001", "0005": "0002"}
    lay = lineage_layout(parents)
    assert {i: d for i, (_, d) in lay.items()} == {"0000": 0, "0001": 1, "0002": 1, "0003": 2, "0004": 2, "0005": 2}
    leaves = sorted(["0003", "0004", "0005"], key=lambda i: lay[i][0])
    assert leaves == ["0003", "0004", "0005"]
    assert lay["0001"][0] == pytest.approx((lay["0003"][0] + lay["0004"][0]) / 2)
    assert lay["0000"][0] == pytest.approx((lay["0001"][0] + lay["0002"][0]) / 2)


def test_report_of_a_new_lab_has_placeholders(tmp_path: Path) -> None:
    cfg = LabConfig()
    cfg.loop.scale = "probe"
    new = Lab.init(tmp_path / "lab", config=cfg, embedder=HashEmbedder())
    new.close()
    rep = build_report(tmp_path / "lab")
    assert rep.html == tmp_path / "lab" / "report" / "index.html"
    assert all(p.is_file() for p in rep.figures.values())
    assert "No baselines cached" in rep.html.read_text()


def test_cli_report(lab: Lab, tmp_path: Path) -> None:
    from asiarch_tui.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["report", str(lab.path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "index.html").is_file()
    assert "index.html" in res.output
    bad = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert bad.exit_code == 1
    assert "not a lab" in bad.output and "Traceback" not in bad.output
