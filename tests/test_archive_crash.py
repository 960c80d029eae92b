"""Crash safety and concurrency: kill -9 in the middle of commits, concurrent writers, stale
locks, damaged derived stores."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from archive.embed import HashEmbedder
from archive.lab import Lab
from archive.lock import LabBusyError, LabLock
from archive.synth import BASE_CODE, grow

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import random, sys
    from archive.embed import HashEmbedder
    from archive.lab import Lab
    from archive.synth import grow
    lab = Lab.open(sys.argv[1], embedder=HashEmbedder(), lock_timeout=60, maintenance_every=int(sys.argv[3]))
    print("open", flush=True)
    grow(lab, int(sys.argv[2]), random.Random(int(sys.argv[4])))
    lab.close()
    print("done", flush=True)
""")


def spawn(lab: Path, n: int, maintenance: int = 1000, seed: int = 0, crash_at: str = "") -> subprocess.Popen:
    env = {**os.environ, "ASIARCH_TEST_CRASH_AT": crash_at}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(lab), str(n), str(maintenance), str(seed)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", f"--git-dir={repo}", *args], capture_output=True, text=True)


def assert_consistent(lab_path: Path) -> int:
    """The repo is valid, every experiment reads back, ids are contiguous, main/best are right,
    the index equals a fresh rebuild, and a new commit works. Returns the experiment count."""
    lab = Lab.open(lab_path, embedder=HashEmbedder())
    repo = lab_path / "archive"
    fsck = git(repo, "fsck", "--strict", "--no-progress", "--no-dangling")
    assert fsck.returncode == 0 and "error" not in fsck.stdout + fsck.stderr, fsck.stdout + fsck.stderr
    assert not lab.store.stale_files()
    ids = lab.store.ids()
    assert ids == [f"{i:04d}" for i in range(len(ids))]
    for e in lab.store.entries():
        rec = lab.store.get(e.id)
        assert rec.id == e.id and rec.tag == e.tag
    assert git(repo, "rev-parse", "HEAD").stdout.strip() == lab.store.commit_of(ids[-1])
    best = lab.store.compute_best()
    if best is not None:
        assert lab.store.best().id == best
    synced = lab.index.dump()
    lab.reindex(novelty=False)
    assert lab.index.dump() == synced
    assert len(lab.novelty) == len(ids)  # caught up after the kill
    grow(lab, 1, random.Random(len(ids)))
    assert lab.store.ids()[-1] == f"{len(ids):04d}"
    lab.close()
    return len(ids) + 1


def test_kill_9_during_commits_leaves_a_valid_repo(tmp_path: Path) -> None:
    lab_path = tmp_path / "lab"
    Lab.init(lab_path, seed_code=BASE_CODE, embedder=HashEmbedder()).close()
    rng = random.Random(1234)
    count = 1
    kills_mid_run = 0
    for trial in range(10):
        # small maintenance interval so that some kills land in pack-refs / repack too
        proc = spawn(lab_path, 400, maintenance=rng.choice([5, 1000]), seed=trial)
        assert proc.stdout.readline().strip() == "open", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        kills_mid_run += "done" not in out
        assert "Traceback" not in err, err
        new_count = assert_consistent(lab_path)
        assert new_count >= count + 1
        count = new_count
    assert kills_mid_run == 10


@pytest.mark.parametrize("point, expect", [
    ("objects", None), ("commit", None), ("tag-lock", "removed stale refs/tags/exp/"),
    ("tag", "moved main"), ("main-lock", "removed stale refs/heads/main.lock"), ("main", None),
    ("best-lock", "removed stale refs/heads/best.lock"), ("maintenance", None),
])
def test_kill_at_each_step_of_a_commit(tmp_path: Path, point: str, expect: str | None) -> None:
    """SIGKILL at each window of a commit (fault injection): the next open repairs and goes on."""
    lab_path = tmp_path / "lab"
    Lab.init(lab_path, seed_code=BASE_CODE, embedder=HashEmbedder()).close()
    proc = spawn(lab_path, 50, maintenance=3, seed=1, crash_at=f"{point}:3")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    lab = Lab.open(lab_path, embedder=HashEmbedder())
    if expect:
        assert any(expect in r for r in lab.recovered), lab.recovered
    lab.close()
    # the experiment in flight is wholly there or wholly absent (checked by assert_consistent)
    assert assert_consistent(lab_path) >= 4


def test_stale_git_locks_of_a_dead_writer_are_removed(tmp_path: Path) -> None:
    lab_path = tmp_path / "lab"
    Lab.init(lab_path, seed_code=BASE_CODE, embedder=HashEmbedder()).close()
    # A writer that dies holding the lab lock and leaving git lock files behind.
    code = textwrap.dedent("""
        import os, sys
        from archive.lock import LabLock
        l = LabLock(os.path.join(sys.argv[1], ".lock")); l.acquire()
        repo = os.path.join(sys.argv[1], "archive")
        for p in ("refs/heads/main.lock", "packed-refs.lock", "packed-refs.new", "index.lock", "objects/obj_tmp123"):
            open(os.path.join(repo, p), "w").write("x")
        os.kill(os.getpid(), 9)
    """)
    subprocess.run([sys.executable, "-c", code, str(lab_path)], cwd=ROOT)
    assert (lab_path / "archive" / "refs/heads/main.lock").exists()
    lab = Lab.open(lab_path, embedder=HashEmbedder())
    assert any("main.lock" in r for r in lab.recovered)
    assert not (lab_path / "archive" / "refs/heads/main.lock").exists()
    assert not lab.store.stale_files()  # packed-refs.new of a killed pack-refs too
    lab.store.maintenance()  # pack-refs is not blocked by it
    grow(lab, 2, random.Random(0))  # the next commit is not blocked
    assert len(lab.store) == 3
    lab.close()


def test_concurrent_writers_are_serialised(tmp_path: Path) -> None:
    lab_path = tmp_path / "lab"
    Lab.init(lab_path, seed_code=BASE_CODE, embedder=HashEmbedder()).close()
    procs = [spawn(lab_path, 12, seed=s) for s in (1, 2, 3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "done" in out, err
    lab = Lab.open(lab_path, embedder=HashEmbedder())
    assert lab.store.ids() == [f"{i:04d}" for i in range(37)]
    assert len(lab.index) == 37 and len(lab.novelty) == 37
    lab.close()
    assert_consistent(lab_path)


def test_second_writer_gets_a_clear_message(tmp_path: Path) -> None:
    lab_path = tmp_path / "lab"
    Lab.init(lab_path, seed_code=BASE_CODE, embedder=HashEmbedder()).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from archive.lock import LabLock; l=LabLock(sys.argv[1]); "
         "l.acquire(); print('held', flush=True); time.sleep(30)", str(lab_path / ".lock")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lab = Lab.open(lab_path, embedder=HashEmbedder())  # reading works while another writes
        assert len(lab.store) == 1
        with pytest.raises(LabBusyError) as info:
            with lab.lock(timeout=0.3):
                pass
        msg = str(info.value)
        assert f"process {holder.pid}" in msg and "in use" in msg
        lab.close()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock; its pid left in the file marks a crash
    lock = LabLock(lab_path / ".lock")
    lock.acquire(timeout=1)
    assert lock.previous_crashed and lock.previous_crashed["pid"] == holder.pid
    lock.release()
    assert LabLock(lab_path / ".lock").holder() is None


def test_corrupt_index_and_deleted_novelty_are_rebuilt(tmp_path: Path) -> None:
    lab_path = tmp_path / "lab"
    lab = Lab.init(lab_path, seed_code=BASE_CODE, embedder=HashEmbedder())
    grow(lab, 12, random.Random(5))
    good = lab.index.dump()
    near = lab.novelty.nearest(lab.store.get("0007").motivation, 1)
    lab.close()
    (lab_path / "index.json").write_text('{"experiments": {"1": {"id": "00')
    (lab_path / "novelty.hnsw").unlink()
    lab = Lab.open(lab_path, embedder=HashEmbedder())
    assert "rebuilt index.json from the archive" in lab.recovered
    assert lab.index.dump() == good
    assert (lab_path / "index.json.damaged").exists()
    assert len(lab.novelty) == 13
    assert lab.novelty.nearest(lab.store.get("0007").motivation, 1) == near
    lab.close()
    # a torn novelty save (keys file disagreeing with the index) is rebuilt too
    keys = lab_path / "novelty.hnsw.keys.json"
    keys.write_text(keys.read_text().replace('"count": 13', '"count": 12'))
    lab = Lab.open(lab_path, embedder=HashEmbedder())
    assert len(lab.novelty) == 13
    lab.close()


def test_interrupted_init_leaves_no_half_lab(tmp_path: Path, monkeypatch) -> None:
    import archive.lab as lab_mod
    from archive.config import LabConfig, write_config
    from archive.store import ArchiveStore

    # an init killed mid-way leaves only a hidden temporary folder, removed by the next init
    dead = tmp_path / ".lab.init-999999"
    (dead / "archive").mkdir(parents=True)
    Lab.init(tmp_path / "lab", seed_code=BASE_CODE, embedder=HashEmbedder()).close()
    assert not dead.exists() and Lab.is_lab(tmp_path / "lab")
    assert [p.name for p in tmp_path.iterdir()] == ["lab"]
    # a lab whose seed commit never happened gets it at the next open
    half = tmp_path / "half"
    half.mkdir()
    write_config(half / "asiarch.toml", LabConfig())
    ArchiveStore.create(half / "archive").close()
    monkeypatch.setattr(lab_mod, "seed_source", lambda: BASE_CODE)
    lab = Lab.open(half, embedder=HashEmbedder())
    assert lab.store.ids() == ["0000"] and "committed the missing seed experiment" in lab.recovered
    assert lab.store.get("0000").code == BASE_CODE
    lab.close()
