"""Archive store, records, config: round trips, lineage against git itself, index rebuild."""

from __future__ import annotations

import json
import random
import subprocess
import tomllib
from pathlib import Path

import pytest

from archive.config import ConfigError, LabConfig, config_from_dict, load_config, render_config, write_config
from archive.embed import HashEmbedder
from archive.lab import Lab, LabError
from archive.record import ExperimentRecord, RecordError, slugify
from archive.store import ArchiveError, ArchiveStore, parse_trailers
from archive.synth import BASE_CODE, grow, synthetic_record


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={repo}", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def lab(tmp_path: Path) -> Lab:
    lab = Lab.init(tmp_path / "lab", seed_code=BASE_CODE, embedder=HashEmbedder())
    yield lab
    lab.close()


def full_record(exp_id: str = "0001", parent: str | None = "0000") -> ExperimentRecord:
    return ExperimentRecord(
        id=exp_id, name="Gated Delta (v2)", parent=parent, references=["0000"], status="accepted",
        motivation="Gate the delta rule.\n\nSecond paragraph: Key: value lines stay in the body.",
        code="import torch\n# ünïcode ok\n", analysis="helped", problem="recall",
        metrics={"val_loss": 1.5, "probes": {"mqar": 0.9}, "loss_curve": [[1, 2.0], [2, 1.5]], "status": "ok"},
        fitness=0.625, fitness_components={"s_loss": 0.7, "s_score": 0.6, "s_judge": 0.575,
                                           "measured": {"s_loss": True, "s_score": True, "s_judge": False}},
        scale="probe", researcher="ollama:qwen3", seed=3,
        checks=[{"name": "causal", "passed": True, "value": None, "reason": None}],
        transcript=[{"role": "researcher", "model": "qwen3", "prompt": "p", "reply": "r", "duration_s": 1.5,
                     "tokens_in": 10, "tokens_out": 20}],
        timings={"train": 12.5}, versions={"torch": "2.13.0"}, genome={"update": "gated_delta"},
        operators=["mutate"], cognition=["deltanet-2024"], train_log="step 1\nstep 2\n", extra={"x": [1, 2]},
    )


def test_record_roundtrip_and_validation() -> None:
    rec = full_record()
    again = ExperimentRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert again == rec
    assert rec.slug == "gated-delta-v2" and rec.tag == "exp/0001-gated-delta-v2"
    assert slugify("  ??? ") == "experiment"
    for bad in (dict(id="1"), dict(status="ok"), dict(fitness=float("nan")), dict(parent="0001"), dict(name=" ")):
        r = full_record()
        for k, v in bad.items():
            setattr(r, k, v)
        with pytest.raises(RecordError):
            r.validate()


def test_commit_roundtrip_files_trailers_and_tags(lab: Lab) -> None:
    rec = full_record()
    sha = lab.commit(rec)
    repo = lab.path / "archive"
    assert lab.store.get("0001") == rec
    assert lab.store.by_tag("exp/0001-gated-delta-v2") == rec
    assert git(repo, "rev-parse", "exp/0001-gated-delta-v2").strip() == sha
    assert git(repo, "rev-parse", "HEAD").strip() == sha  # main follows the latest
    assert git(repo, "rev-parse", "best").strip() == sha
    files = git(repo, "ls-tree", "--name-only", sha).split()
    assert files == ["analysis.md", "metrics.json", "mixer.py", "motivation.md", "record.json", "train.log"]
    assert git(repo, "show", f"{sha}:mixer.py") == rec.code
    assert json.loads(git(repo, "show", f"{sha}:metrics.json")) == rec.metrics
    msg = git(repo, "log", "-1", "--format=%B", sha)
    assert msg.splitlines()[0] == "Gated Delta (v2): Gate the delta rule."
    t = parse_trailers(msg)
    assert t == {"Experiment-Id": "0001", "Status": "accepted", "Fitness": "0.625000", "Parent": "0000",
                 "References": "0000", "Researcher": "ollama:qwen3", "Scale": "probe"}
    # git's own trailer parser agrees
    git_t = git(repo, "log", "-1", "--format=%(trailers:key=Experiment-Id,valueonly)", sha).strip()
    assert git_t == "0001"
    assert git(repo, "fsck", "--strict", "--no-progress") == ""


def test_failed_and_rejected_are_committed_and_best_moves(lab: Lab) -> None:
    for i, (status, fit) in enumerate([("accepted", 0.3), ("failed", None), ("rejected", None),
                                       ("accepted", 0.9), ("accepted", 0.5)], start=1):
        r = synthetic_record(random.Random(i), f"{i:04d}", lab.store.get("0000"))
        r.status, r.fitness = status, fit
        lab.commit(r)
        if i == 1:
            assert lab.store.best().id == "0001"
    assert lab.store.best().id == "0004"
    repo = lab.path / "archive"
    statuses = git(repo, "log", "--all", "--format=%(trailers:key=Status,valueonly)").split()
    assert sorted(statuses) == ["accepted"] * 4 + ["failed", "rejected"]
    assert lab.index.counts() == {"accepted": 4, "failed": 1, "rejected": 1}
    assert lab.store.compute_best() == "0004"


def test_commit_errors(lab: Lab) -> None:
    with pytest.raises(ArchiveError, match="already in the archive"):
        lab.commit(full_record("0000", None))
    with pytest.raises(ArchiveError, match="no experiment 0042"):
        lab.commit(full_record("0001", "0042"))
    r = full_record()
    r.references = ["0099"]
    with pytest.raises(ArchiveError):
        lab.commit(r)
    assert len(lab.store) == 1  # nothing half-written
    with pytest.raises(LabError, match="already a lab"):
        Lab.init(lab.path, seed_code=BASE_CODE)


def test_lineage_matches_git(lab: Lab) -> None:
    rng = random.Random(7)
    grow(lab, 40, rng)
    repo = lab.path / "archive"
    store = lab.store
    # parents from git's own view of the commit graph
    commit_parents = {}
    for line in git(repo, "log", "--all", "--format=%H %P").splitlines():
        parts = line.split()
        commit_parents[parts[0]] = parts[1] if len(parts) > 1 else None
    assert len(commit_parents) == 41
    for e in store.entries():
        rec = store.get(e.id)
        pc = commit_parents[e.commit]
        assert (store.id_of_commit(pc) if pc else None) == rec.parent == store.parent_id(e.id)
        # path to root equals git's first-parent walk
        walk = git(repo, "rev-list", "--first-parent", e.commit).split()
        assert [store.id_of_commit(s) for s in walk] == store.path_to_root(e.id)
    # children: commits whose parent is the experiment's commit
    for e in store.entries():
        kids = sorted(store.id_of_commit(c) for c, p in commit_parents.items() if p == e.commit)
        assert store.children(e.id) == kids
    assert [r.id for r in store.all()] == [f"{i:04d}" for i in range(41)]
    assert store.next_id() == "0041"
    graph = git(repo, "log", "--graph", "--oneline", "--all")
    assert graph.count("*") == 41


def test_reindex_is_identical_and_catches_up(lab: Lab, tmp_path: Path) -> None:
    grow(lab, 25, random.Random(3))
    lab.index.flush()
    incremental = lab.index.dump()
    text_before = (lab.path / "index.json").read_text()
    lab.reindex(novelty=False)
    assert lab.index.dump() == incremental
    assert (lab.path / "index.json").read_text() == text_before
    doc = lab.index.get("0005")
    assert set(doc) >= {"id", "name", "parent", "status", "fitness", "fitness_components", "scale",
                        "metrics", "created", "commit"}
    assert doc["commit"] == lab.store.commit_of("0005")
    lab.close()
    # a stale index (written before later commits) is caught up at open
    stale = lab.path / "index.json"
    other = Lab.open(lab.path, embedder=HashEmbedder())
    grow(other, 3, random.Random(4))
    other.close()
    stale.write_text(text_before)
    again = Lab.open(lab.path, embedder=HashEmbedder())
    assert len(again.index) == 29
    fresh = again.index.dump()
    again.reindex(novelty=False)
    assert again.index.dump() == fresh
    again.close()


def test_maintenance_packs_and_keeps_everything(tmp_path: Path) -> None:
    store = ArchiveStore.create(tmp_path / "a")
    store.maintenance_every = 10
    rng = random.Random(0)
    prev = None
    for i in range(25):
        rec = synthetic_record(rng, f"{i:04d}", prev)
        store.commit(rec)
        prev = rec if rec.status == "accepted" or prev is None else prev
    assert (tmp_path / "a" / "packed-refs").is_file()
    assert list((tmp_path / "a" / "objects" / "pack").glob("*.pack"))
    again = ArchiveStore(tmp_path / "a")
    assert again.ids() == [f"{i:04d}" for i in range(25)]
    assert again.get("0003").id == "0003"
    assert git(tmp_path / "a", "fsck", "--strict", "--no-progress") == ""


def test_config_template_roundtrip_and_errors(tmp_path: Path) -> None:
    cfg = LabConfig()
    cfg.loop.scale, cfg.llm.researcher, cfg.data.corpus = "verify", "ollama", ["a.txt", 'q"uote.txt', "new\nline\t.txt"]
    p = tmp_path / "asiarch.toml"
    write_config(p, cfg)
    text = p.read_text()
    assert load_config(p) == cfg
    # every key of every section is documented by a comment line above it
    lines = text.splitlines()
    data = tomllib.loads(text)
    for section, keys in data.items():
        for key in keys:
            i = next(n for n, line in enumerate(lines) if line.startswith(f"{key} = "))
            j = i
            while not lines[j - 1].startswith("#"):
                j -= 1
                assert not lines[j].startswith("[")
            assert lines[j - 1].startswith("#"), key
    assert render_config(LabConfig()).count("\n#") > 30
    for bad, message in [
            ({"loop": {"mode": "fast"}}, "loop.mode: Input should be 'autonomous' or 'supervised' (got 'fast')"),
            ({"loop": {"novelty_threshold": 2}}, "loop.novelty_threshold: Input should be less than or equal to 1 (got 2)"),
            ({"llm": {"judge": "gpt"}}, "llm.judge: Input should be 'builtin', 'ollama' or 'openai' (got 'gpt')"),
            ({"loop": {"experiments": "ten"}}, "loop.experiments: Input should be a valid integer (got 'ten')"),
            ({"loop": {"experiments": "10"}}, "loop.experiments: Input should be a valid integer (got '10')"),
            ({"loop": {"seeds": 0}}, "loop.seeds: Input should be greater than or equal to 1 (got 0)"),
            ({"sampling": {"reference_ranks": [50, 11]}},
             "sampling.reference_ranks: must be [first, last] with 1 <= first <= last (got [50, 11])"),
            ({"llm": {"context_length": 100}}, "llm.context_length: must be 0 (ask the server) or at least 256 tokens"),
            ({"colour": {}}, "unknown section [colour] (known: llm, loop, sampling, executor, data, embedding, guards)"),
            ({"executor": {"gpu": 1}}, "executor.gpu: unknown key (known: kind, ray_address, cpus_per_task,"),
            ({"loop": 3}, "loop must be a [loop] table"),
            ({"data": {"corpus": ["a.txt", 3]}}, "data.corpus.1: Input should be a valid string (got 3)")]:
        with pytest.raises(ConfigError) as err:
            config_from_dict(bad, "lab/asiarch.toml")
        assert str(err.value).startswith("lab/asiarch.toml: ") and message in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match=r"asiarch.toml: loop.hours: .*; loop.seeds: "):  # every bad key at once
        config_from_dict({"loop": {"hours": -1, "seeds": 0}})
    cfg = config_from_dict({"loop": {"hours": 2}})
    assert cfg.loop.hours == 2.0 and isinstance(cfg.loop.hours, float)  # an integer is a valid float
    with pytest.raises(ValueError, match="seeds"):  # an assignment is checked too
        cfg.loop.seeds = 0
    p.write_text("[loop\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_a_reader_picks_up_another_writers_commits(lab: Lab) -> None:
    reader = Lab.open(lab.path, embedder=HashEmbedder())
    assert not reader.refresh()
    grow(lab, 3, random.Random(9))
    assert reader.refresh()
    assert len(reader.index) == 4 and reader.store.ids()[-1] == "0003"
    reader.close()
