"""benchmarks/_common.py (the --json record every benchmark prints) and scripts/bench.py (make bench)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


common = _load(ROOT / "benchmarks" / "_common.py", "_common")
bench = _load(ROOT / "scripts" / "bench.py", "_bench_script")


def test_machine_facts():
    facts = common.machine_facts()
    assert {"cpu_model", "logical_cpus", "torch_threads", "torch_version", "python", "load_average",
            "git_commit"} <= set(facts)
    assert isinstance(facts["cpu_model"], str) and facts["cpu_model"]
    assert facts["logical_cpus"] >= 1
    assert facts["torch_version"].startswith("2.")
    assert len(facts["load_average"]) == 3


def test_json_output_sends_the_report_to_stderr_and_one_line_to_stdout(capsys):
    with common.json_output("demo", True) as rec:
        print("a human-readable report line")
        rec.settings["n"] = 3
        rec.figures.update(speed=1.5, missing=float("nan"), nested={"inf": float("inf")})
    out, err = capsys.readouterr()
    assert "a human-readable report line" in err
    lines = out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["benchmark"] == "demo" and record["settings"] == {"n": 3}
    assert record["figures"] == {"speed": 1.5, "missing": None, "nested": {"inf": None}}
    assert record["machine"]["cpu_model"] and "load_average_at_start" in record["machine"]


def test_json_output_disabled_prints_nothing_extra(capsys):
    with common.json_output("demo", False) as rec:
        print("report")
        rec.figures["x"] = 1
    out, err = capsys.readouterr()
    assert out == "report\n" and err == ""


def test_json_output_records_an_error_and_reraises(capsys):
    with pytest.raises(RuntimeError, match="boom"):
        with common.json_output("demo", True) as rec:
            rec.figures["partial"] = 1
            raise RuntimeError("boom")
    record = json.loads(capsys.readouterr().out)
    assert record["figures"] == {"partial": 1, "error": "RuntimeError: boom"}


def test_flatten_and_names():
    flat = dict(bench.flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 2}]}))
    assert flat == {"a.b": 1, "a.c": [1, 2], "d[0].e": 2}
    names = bench.benchmarks()
    assert "ops_throughput" in names and "bf16" in names and "_common" not in names
    assert set(bench.QUICK_ARGS) == set(names)  # every benchmark has smallest settings for --quick


def test_bench_script_runs_a_benchmark_and_appends_its_record(tmp_path, capsys):
    args = ["ops_throughput", "--results", str(tmp_path), "--",
            "--lengths", "16", "--ops", "linear_attention", "--repeats", "1"]
    assert bench.main(args) == 0
    lines = (tmp_path / "ops_throughput.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    entry = record["figures"]["ops"]["linear_attention"]["16"]
    assert entry["ours"]["tokens_per_s"] > 0 and entry["chunk"] == 16
    assert record["settings"]["clock"] == "thread" and record["run"]["status"] == "ok"
    assert "ops.linear_attention.16.ours.tokens_per_s" in capsys.readouterr().out  # the table
