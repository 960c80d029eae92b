"""The Ray executor against a local Ray instance started here (2 CPUs, temporary directory):
parallel evaluations, the sandbox inside each task, a worker killed mid-task (retried once, then
recorded as failed), the orphaned sandbox child cleaned up. Skipped when Ray is not installed
(it is the optional ``cluster`` extra)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from agents.engineer import SandboxExecutor, StepResult

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"


def test_make_executor_local_and_missing_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import ray_executor as rx
    from archive.config import ExecutorConfig

    assert isinstance(rx.make_executor(ExecutorConfig(kind="local"), "probe"), SandboxExecutor)
    with pytest.raises(ValueError):
        rx.make_executor(ExecutorConfig.model_construct(kind="slurm"), "probe")  # past the model's own check
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(rx.RayUnavailable, match=r"asiarch\[cluster\]"):
        rx.make_executor(ExecutorConfig(kind="ray"), "probe")


try:
    import ray
except ImportError:  # the optional cluster extra
    ray = None
import psutil  # noqa: E402

from agents.ray_executor import RayExecutor, make_executor  # noqa: E402
from training.mixers import REFERENCE_MIXERS  # noqa: E402
from training.sandbox import Limits  # noqa: E402
from training.scales import get_scale, scaled_down  # noqa: E402

NO_RAY = "Ray is not installed: it is the optional cluster extra (pip install 'asiarch[cluster]')"

#: A tiny scale: two probes, a few steps each (the cost is mostly the child's start-up).
TINY = scaled_down(dataclasses.replace(get_scale("probe"), probes=get_scale("probe").probes[:2]), 0.02)
MIXER = Path(REFERENCE_MIXERS["linear_attention"])


def test_no_cluster_at_auto_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if ray is None:
        pytest.skip(NO_RAY)
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no cluster recorded there
    ex = RayExecutor(address="auto")
    try:
        ex.connect()
    except Exception as exc:  # noqa: BLE001
        from agents.ray_executor import RayUnavailable

        assert isinstance(exc, RayUnavailable) and isinstance(exc, ValueError)
        assert "ray start --head" in str(exc) and 'kind = "local"' in str(exc)
    else:  # a cluster runs on this machine after all: nothing to check here
        ex.close()
        ray.shutdown()
        pytest.skip("a Ray cluster is running on this machine")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module: 2 CPUs, its own short temporary directory."""
    if ray is None:
        pytest.skip(NO_RAY)
    tmp = tempfile.mkdtemp(prefix="rt")  # short: Ray puts unix sockets in it
    ray.init(num_cpus=2, _temp_dir=tmp, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _executor(tmp_path: Path, **kw) -> RayExecutor:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return RayExecutor(kw.pop("scale", TINY), kw.pop("limits", Limits(wall_s=120)), num_cpus=1, scratch_root=scratch,
                       **kw)


def _sandbox_children(scratch: Path) -> list:
    """Sandbox children of Ray workers whose run folder is under ``scratch`` (this test's): the
    bwrap process binding a candidate from there, or (without bwrap) the child whose HOME is
    there."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            argv = p.info["cmdline"] or []
            cmd = " ".join(argv)
            if argv and os.path.basename(argv[0]) == "bwrap":
                if str(scratch) in cmd:
                    found.append(p)
                continue
            if "training.sandbox_child" not in cmd and "sandbox" not in cmd:
                continue
            home = p.environ().get("HOME", "")
            if home.startswith(str(scratch)):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _kill_worker_of_next_child(scratch: Path, skip: set[int], timeout: float = 90.0):
    """Wait for a new sandbox child under ``scratch``, SIGKILL its parent (the Ray worker);
    return the child."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        for child in _sandbox_children(scratch):
            if child.pid in skip:
                continue
            try:
                parent = child.parent()
            except psutil.NoSuchProcess:
                continue
            if parent is None or not " ".join(parent.cmdline()).startswith("ray::"):
                continue
            time.sleep(0.6)  # let the worker's watchdog see its child
            parent.kill()
            return child
        time.sleep(0.1)
    raise AssertionError("no sandbox child of a Ray worker appeared")


def _gone(proc, timeout: float = 20.0) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def test_watchdog_kills_the_sandbox_children_of_a_dead_worker() -> None:
    """The task's watchdog (no Ray needed): a stand-in worker starts it and a child in its own
    session, as the sandbox does; SIGKILL the worker and the child goes too, then the watchdog."""
    import subprocess

    script = ("import subprocess, time\n"
              "from agents.ray_executor import _start_watchdog\n"
              "dog = _start_watchdog()\n"
              "child = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
              "print(child.pid, dog.pid, flush=True)\n"
              "time.sleep(120)\n")
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    child_pid, dog_pid = map(int, worker.stdout.readline().split())
    child, dog = psutil.Process(child_pid), psutil.Process(dog_pid)
    time.sleep(1.0)  # the watchdog looks every 0.25 s
    assert not _gone(child, timeout=0.1)
    worker.kill()
    worker.wait()
    assert _gone(child), "the worker's sandbox child was left running"
    assert _gone(dog), "the watchdog did not end with its worker"


@pytest.mark.slow
def test_parallel_evaluations(cluster, tmp_path: Path) -> None:
    ex = _executor(tmp_path)
    results: dict[int, StepResult] = {}
    lines: dict[int, list[str]] = {0: [], 1: []}

    def run(i: int) -> None:
        results[i] = ex.evaluate(MIXER, tmp_path / f"run{i}", seed=i, baseline=None, on_line=lines[i].append)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(results) == {0, 1}
    for i, res in results.items():
        assert res.ok, res.error
        assert res.metrics["status"] == "ok"
        assert 0.0 <= res.metrics["probe_mean"] <= 1.0
        assert res.metrics["seed"] == i
        info = res.metrics["executor"]
        assert info["kind"] == "ray" and [a["outcome"] for a in info["attempts"]] == ["ran"]
        # every line came through the log sink while the task ran, none was replayed at the end
        assert info["lines"] == len(lines[i]) == info["streamed"] > 0
        assert (tmp_path / f"run{i}" / "evaluate.log").read_text().strip()
        assert lines[i], "the task's log lines are replayed to on_line"
    a, b = results[0].metrics["executor"], results[1].metrics["executor"]
    # both ran at once, in two worker processes (2 CPUs, 1 per task)
    assert a["pid"] != b["pid"]
    assert a["started"] < b["ended"] and b["started"] < a["ended"]
    # the worker's scratch is removed after each task
    assert list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.slow
def test_sandbox_applies_inside_the_task(cluster, tmp_path: Path) -> None:
    escape = tmp_path / "escape"
    escape.mkdir()
    src = (HOSTILE / "escape_runtime.py").read_text().replace("ESCAPE_DIR", str(escape))
    path = tmp_path / "hostile.py"
    path.write_text(src)
    ex = _executor(tmp_path, stream_logs=False)  # (and the lines come with the result instead)
    lines: list[str] = []
    res = ex.evaluate(path, tmp_path / "run", seed=0, baseline=None, on_line=lines.append)
    assert list(escape.iterdir()) == [], "the candidate escaped the sandbox inside the Ray task"
    assert lines == (tmp_path / "run" / "evaluate.log").read_text().splitlines()
    # the static checks run in the task too: a forbidden import is refused
    bad = tmp_path / "bad.py"
    bad.write_text((HOSTILE / "escape_import_os.py").read_text())
    chk = ex.check(bad, tmp_path / "check")
    assert not chk.ok and chk.checks and not all(c["passed"] for c in chk.checks)
    assert isinstance(res, StepResult)


@pytest.mark.slow
def test_worker_killed_mid_task_is_retried(cluster, tmp_path: Path) -> None:
    ex = _executor(tmp_path)
    out: dict[str, StepResult] = {}
    lines: list[str] = []
    t = threading.Thread(target=lambda: out.setdefault("r", ex.evaluate(MIXER, tmp_path / "run", 0, None,
                                                                         on_line=lines.append)))
    t.start()
    victim = _kill_worker_of_next_child(tmp_path / "scratch", set())
    t.join(300)
    res = out["r"]
    assert res.ok, res.error
    outcomes = [a["outcome"] for a in res.metrics["executor"]["attempts"]]
    assert outcomes == ["lost", "ran"]
    assert any("retrying" in line for line in lines)
    assert _gone(victim), "the sandbox child of the killed worker was left running"


@pytest.mark.slow
def test_worker_lost_twice_is_recorded_failed(cluster, tmp_path: Path) -> None:
    # a mixer that never finishes, so both attempts are surely killed mid-task
    path = tmp_path / "forever.py"
    path.write_text((HOSTILE / "infinite_loop.py").read_text())
    ex = _executor(tmp_path, limits=Limits(wall_s=90, cpu_s=90))
    out: dict[str, StepResult] = {}
    t = threading.Thread(target=lambda: out.setdefault("r", ex.evaluate(path, tmp_path / "run", 0, None)))
    t.start()
    first = _kill_worker_of_next_child(tmp_path / "scratch", set())
    second = _kill_worker_of_next_child(tmp_path / "scratch", {first.pid})
    t.join(120)
    res = out["r"]
    assert not res.ok
    assert res.metrics["status"] == "stopped"  # not "error": the Debugger is not asked to fix a lost machine
    assert "died 2 times" in res.error
    assert [a["outcome"] for a in res.metrics["executor"]["attempts"]] == ["lost", "lost"]
    assert "died 2 times" in (tmp_path / "run" / "evaluate.log").read_text()
    assert _gone(first) and _gone(second)


@pytest.mark.slow
def test_make_executor_ray_uses_the_config(cluster) -> None:
    from archive.config import ExecutorConfig

    ex = make_executor(ExecutorConfig(kind="ray", ray_address="auto", cpus_per_task=2.0, gpus_per_task=0.0), "probe")
    assert isinstance(ex, RayExecutor)
    assert ex.num_cpus == 2.0 and ex.address == "auto"
    assert ex.connect() is ray  # Ray already initialised here: reused, not restarted


@pytest.mark.slow
def test_loop_with_two_ray_evaluations_keeps_lineage(cluster, tmp_path: Path) -> None:
    """The real loop (built-in researcher) with two evaluations in flight on Ray (the seed's
    baseline measured there first): every record is committed once, after its parent, with its
    parent's commit as the first parent."""
    from agents.events import ExperimentFinished
    from agents.loop import Loop
    from tests.loop_helpers import make_lab

    lab = make_lab(tmp_path / "lab")
    ex = _executor(tmp_path)
    loop = Loop(lab, llm="builtin", scale=TINY, executor=ex, experiments=2, baselines=("deltanet",), concurrency=2,
                debug_rounds=0)
    events = []
    loop.subscribe(events.append)
    summary = loop.run()
    assert summary.state == "finished"
    assert len(summary.experiments) == 2
    store = lab.store
    for e in summary.experiments:
        rec = store.get(e["id"])
        assert rec.parent in store
        assert store.entry(rec.id).parent_commit == store.commit_of(rec.parent)
        if rec.status == "accepted":
            assert rec.metrics["executor"]["kind"] == "ray"
    finished = [e.exp_id for e in events if isinstance(e, ExperimentFinished) and e.reason != "seed measured"]
    assert sorted(finished) == sorted(e["id"] for e in summary.experiments)
    # the seed's baseline was measured through Ray too
    assert loop.seed_baseline()["executor"]["kind"] == "ray"
    lab.close()
