"""The sandbox: limits end runaway children with a clear reason, escapes make no file outside the
run folder and no connection, and the evaluate task streams its log."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from training import sandbox as sandbox_mod
from training.sandbox import Limits, SandboxError, bwrap_path, run_sandboxed
from training.checker import _scale_config
from tests.engine_helpers import listener

HOSTILE = Path(__file__).parent / "hostile"
SCALE = _scale_config("probe")
FAST = {"lengths": [256, 512, 1024], "time_budget_s": 1.0}




def _assert_no_connection(srv: socket.socket) -> None:
    with pytest.raises(socket.timeout):
        conn, _ = srv.accept()
        conn.close()


def _candidate(tmp_path: Path, name: str, escape_dir: Path | None = None, port: int | None = None) -> Path:
    src = (HOSTILE / f"{name}.py").read_text()
    if escape_dir is not None:
        src = src.replace("ESCAPE_DIR", str(escape_dir))
    if port is not None:
        src = src.replace("45678", str(port))
    path = tmp_path / f"{name}.py"
    path.write_text(src)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


MODES = ["none"] + (["bwrap"] if bwrap_path() is not None else [])
needs_bwrap = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap is not installed or cannot run here")


def _no_bwrap(monkeypatch) -> None:
    """Make this process believe bubblewrap is missing (the unsandboxed mode)."""
    monkeypatch.setattr(sandbox_mod, "_bwrap_status", lambda: (None, "bubblewrap (`bwrap`) is not installed"))


@pytest.mark.parametrize("mode", MODES)
def test_runtime_escapes_make_no_file_and_no_connection(mode, tmp_path, monkeypatch):
    """escape_runtime.py gets past the static wall (turned off here) and tries os.system, the real
    open() (absolute and ../relative), os.open, raw and high-level sockets and subprocess."""
    outside = tmp_path / "outside"
    outside.mkdir()
    srv = listener()
    try:
        cand = _candidate(tmp_path, "escape_runtime", outside, srv.getsockname()[1])
        before = _tree(tmp_path)
        if mode == "none":
            _no_bwrap(monkeypatch)
        res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "static_check": False, "options": FAST},
                            tmp_path / "run", limits=Limits(wall_s=90, unsafe_no_sandbox=True))
        _assert_no_connection(srv)
    finally:
        srv.close()
    assert res.isolation == mode
    assert not res.ok and res.reason and "sandbox:" in res.reason, res.reason
    assert list(outside.iterdir()) == []
    new = {p for p in _tree(tmp_path) - before if not p.startswith("run")}
    assert new == set(), new  # nothing appeared outside the run folder
    log = res.log_path.read_text()
    assert "root:" not in log
    for what in ("os.system", "pwned_relative", "os_open", "socket.__new__", "network access", "subprocess.Popen",
                 "reading /etc/passwd"):
        assert what in log, what
    checks = {e["check"]["name"]: e["check"] for e in res.events if e.get("event") == "check"}
    assert not checks["build"]["passed"] and "sandbox:" in checks["build"]["reason"]


@pytest.mark.parametrize("name, needle", [
    ("escape_socket", "sandbox: importing 'socket' is not allowed"),
])
def test_static_escapes_are_also_stopped_at_runtime(name, needle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    srv = listener()
    try:
        cand = _candidate(tmp_path, name, outside, srv.getsockname()[1])
        res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "static_check": False, "options": FAST},
                            tmp_path / "run", limits=Limits(wall_s=90))
        _assert_no_connection(srv)
    finally:
        srv.close()
    assert not res.ok and needle in res.reason, res.reason
    assert list(outside.iterdir()) == []


def test_infinite_loop_is_killed_at_the_wall_time(tmp_path):
    res = run_sandboxed("check", {"path": str(HOSTILE / "infinite_loop.py"), "scale": SCALE},
                        tmp_path / "run", limits=Limits(wall_s=45, cpu_s=200))
    assert not res.ok and res.reason == "killed after 45 s wall time"
    assert res.result is None and res.returncode == -9
    started = [e["name"] for e in res.events if e.get("event") == "start"]
    assert started[-1] == "forward_backward"  # the parent knows which check was running
    wheres = [e["config"] for e in res.events if e.get("event") == "where"]
    assert wheres[-1] == "L=32, batch 2, train mode, grad on"  # ... and in which configuration


def test_cpu_limit_gives_a_clear_reason(tmp_path):
    res = run_sandboxed("check", {"path": str(HOSTILE / "infinite_loop.py"), "scale": SCALE},
                        tmp_path / "run", limits=Limits(cpu_s=4, wall_s=120))
    # the worker (which alone runs candidate code) hit its CPU limit; the harness says where
    assert not res.ok and res.reason == "forward_backward: exceeded 4 s CPU time (at L=32, batch 2, train mode, grad on)", \
        res.reason


def test_cpu_limit_is_the_workers_and_the_harness_has_a_start_up_allowance():
    """The harness's own import of torch and its verdicts must not eat the worker's CPU seconds:
    on a loaded machine a 4 s limit used to kill the harness before the worker existed. The
    harness's limit is ``cpu_s`` + HARNESS_CPU_S; the worker sets ``cpu_s`` itself after the fork."""
    import subprocess

    from training.sandbox_child import HARNESS_CPU_S

    code = ("import resource; from training.sandbox_child import apply_limits; "
            "apply_limits({'cpu_s': 4, 'address_space_gib': 8, 'file_size_mib': 16}); "
            "print(resource.getrlimit(resource.RLIMIT_CPU))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parent.parent)).stdout
    assert out.strip() == str((4 + HARNESS_CPU_S, 4 + HARNESS_CPU_S + 5))
    # that the worker holds the 4 s itself: test_cpu_limit_gives_a_clear_reason


def test_memory_bomb_exceeds_the_address_space(tmp_path):
    res = run_sandboxed("check", {"path": str(HOSTILE / "memory_bomb.py"), "scale": SCALE},
                        tmp_path / "run", limits=Limits(address_space_gib=2, wall_s=90))
    assert not res.ok
    checks = {e["check"]["name"]: e["check"] for e in res.events if e.get("event") == "check"}
    assert checks["forward_backward"]["reason"] == "exceeded 2 GiB address space (at L=32, batch 2, train mode, grad on)"
    assert "exceeded 2 GiB address space" in res.reason


def test_check_streams_lines_and_keeps_files_in_the_run_folder(tmp_path):
    lines: list[str] = []
    events: list[dict] = []
    cand = _candidate(tmp_path, "valid_cummean")
    before = _tree(tmp_path)
    res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "options": FAST}, tmp_path / "run",
                        on_line=lines.append, on_event=events.append, limits=Limits(wall_s=90))
    assert res.ok, res.reason
    assert [c["name"] for c in res.result["checks"]] == ["build", "forward_backward", "causality",
                                                         "subquadratic", "determinism"]
    assert any(line.startswith("[check] causality: pass") for line in lines)
    assert res.log_path.read_text().splitlines() == lines
    assert [e["check"]["name"] for e in events if e["event"] == "check"] == [c["name"] for c in res.result["checks"]]
    assert {p for p in _tree(tmp_path) - before if not p.startswith("run")} == set()
    assert (tmp_path / "run" / "mixer.py").read_text() == cand.read_text()
    assert "asiarch_candidate" not in sys.modules


def test_evaluate_task_streams_the_training_log(tmp_path):
    lines: list[str] = []
    events: list[dict] = []
    res = run_sandboxed("evaluate", {"path": str(HOSTILE / "valid_cummean.py"), "scale": "probe",
                                     "scale_factor": 0.02, "seed": 0},
                        tmp_path / "run", on_line=lines.append, on_event=events.append, limits=Limits(wall_s=120))
    assert res.ok, res.reason
    metrics = res.result["metrics"]
    assert metrics["status"] == "ok" and metrics["mixer_params"] == 2 * (64 * 64 + 64)
    assert set(metrics["probes"]) and all(0.0 <= v <= 1.0 for v in metrics["probes"].values())
    assert any("[mqar]" in line for line in lines)
    assert any(e.get("event") == "progress" for e in events)
    # the post-training causality check ran on every trained model and is on the record
    after = metrics["causality_after_training"]
    assert after["checked"] and after["violation"] is None and sorted(after["models"]) == sorted(metrics["probes"])
    assert after["mode"] == "eval" and after["grad"] == "off" and after["max_change"] <= after["tol"]
    for label, positions in after["positions"].items():
        assert positions[0] == 1 and positions[-1] == after["length"][label] - 1 and len(positions) >= 2


def test_a_design_non_causal_only_after_training_is_rejected(tmp_path):
    """leak_after_training passes every check (its future read arms only after several optimiser
    updates; the checker's fresh and re-drawn models see at most one). The harness's check of the
    trained models, on their scored batches in the scored configuration, finds it: the
    evaluation is ``rejected`` with the model, configuration, position and size of the change."""
    from training.checker import check_file
    from training.probes import EVAL_BATCH_SIZE
    from training.scales import scaled_down

    report = check_file(HOSTILE / "leak_after_training.py", "probe", run_dir=tmp_path / "check",
                        limits=Limits(wall_s=120), options=FAST)
    assert report.passed, [(c.name, c.reason) for c in report.checks if not c.passed]
    res = run_sandboxed("evaluate", {"path": str(HOSTILE / "leak_after_training.py"), "scale": "probe",
                                     "scale_factor": 0.02, "seed": 0}, tmp_path / "run", limits=Limits(wall_s=300))
    assert not res.ok
    reason = res.reason or ""
    assert reason.startswith("non-causal (found after training): the trained "), reason
    assert "eval mode, grad off" in reason and "position" in reason and "change" in reason, reason
    metrics = res.result["metrics"]
    assert metrics["status"] == "rejected" and metrics["stop_reason"] == reason and metrics["partial"]
    after = metrics["causality_after_training"]
    assert after["checked"] and after["violation"] == reason and after["max_change"] > after["tol"]
    assert after["worst"]["model"] in after["models"] and after["worst"]["change"] == after["max_change"]
    specs = {p.label: p for p in scaled_down("probe", 0.02).probes}
    for label in after["models"]:  # the scored forward's batch and length, read from the scale
        assert after["batch"][label] == min(EVAL_BATCH_SIZE, specs[label].eval_examples)
        assert after["length"][label] == specs[label].seq_len


def _leak_baseline(mean: float = 0.0) -> dict:
    """A seed baseline carrying the leak monitor's references: softmax attention at ``mean`` on every
    probe of the scale (synthetic: every measured accuracy above it is flagged)."""
    from training.leak_monitor import leak_reference
    from training.scales import get_scale

    soft = {"probes": {p.label: mean for p in get_scale("probe").probes}}
    return {"leak_reference": leak_reference({"softmax_attention": soft})}


def test_the_leak_monitor_rechecks_a_flagged_design_before_it_is_scored(tmp_path):
    """A probe accuracy above softmax attention's (synthetic baseline) flags the design; the
    harness re-runs the checker's causality check on the flagged trained mixers (as trained and
    re-drawn, train and eval mode, grad on and off); an honest design passes and stays ``ok``, with
    the evidence in its metrics."""
    res = run_sandboxed("evaluate", {"path": str(HOSTILE / "valid_cummean.py"), "scale": "probe",
                                     "scale_factor": 0.02, "seed": 0, "baseline": _leak_baseline()},
                        tmp_path / "run", limits=Limits(wall_s=300))
    assert res.ok, res.reason
    m = res.result["metrics"]
    lm = m["leak_monitor"]
    rule = lm["probe_rule"]
    assert lm["fired"] and rule["checked"] and rule["fired"] and rule["reference"] == "softmax_attention"
    flagged = [f["probe"] for f in rule["flags"]]
    assert flagged and all(m["probes"][p] > 0.0 for p in flagged)
    rechecked = rule["recheck"]
    assert rechecked and all(all(layer["passed"] for layer in r["layers"]) for r in rechecked)
    assert all("params as-trained/re-drawn" in layer["reason"] for r in rechecked for layer in r["layers"])
    assert m["status"] == "ok" and not m["partial"]
    # no reference measured yet: the rule says so instead of guessing
    res = run_sandboxed("evaluate", {"path": str(HOSTILE / "valid_cummean.py"), "scale": "probe",
                                     "scale_factor": 0.02, "seed": 0}, tmp_path / "run2", limits=Limits(wall_s=300))
    rule = res.result["metrics"]["leak_monitor"]["probe_rule"]
    assert res.ok and not rule["checked"] and "no softmax_attention baseline" in rule["reason"]


def test_the_leak_monitor_recheck_finds_a_train_mode_leak_of_the_trained_mixer(tmp_path):
    """leak_after_training_train_mode reads the future only once trained and only in train mode
    with grad on: the post-training check of the scored forward (eval, grad off) passes; the leak
    monitor's re-check of the trained mixers finds it and rejects the evaluation."""
    import re

    res = run_sandboxed("evaluate", {"path": str(HOSTILE / "leak_after_training_train_mode.py"), "scale": "probe",
                                     "scale_factor": 0.02, "seed": 0, "baseline": _leak_baseline()},
                        tmp_path / "run", limits=Limits(wall_s=300))
    assert not res.ok
    reason = res.reason or ""
    m = res.result["metrics"]
    assert m["causality_after_training"]["checked"] and m["causality_after_training"]["violation"] is None
    assert reason.startswith("non-causal (found after training): the leak monitor flagged "), reason
    assert "the checker's causality check on the trained" in reason, reason
    assert re.search(r"train mode, grad on, params (as-trained|re-drawn)", reason) and "position" in reason, reason
    assert m["status"] == "rejected" and m["leak_monitor"]["violation"] == reason


def test_static_check_is_enforced_inside_the_child_too(tmp_path):
    res = run_sandboxed("evaluate", {"path": str(HOSTILE / "escape_socket.py"), "scale": "probe",
                                     "scale_factor": 0.02}, tmp_path / "run", limits=Limits(wall_s=90))
    assert not res.ok and "static check failed" in res.reason and "import socket" in res.reason


def test_bad_requests_raise_sandbox_error(tmp_path):
    with pytest.raises(SandboxError, match="unknown sandbox task"):
        run_sandboxed("train", {}, tmp_path)
    with pytest.raises(SandboxError, match="does not exist"):
        run_sandboxed("check", {"path": str(tmp_path / "nope.py")}, tmp_path)


def test_limits_for_evaluation_follow_the_guards():
    """The kernel limits sit above the guards: wall = hang guard + 60 s; CPU = 1.25 x the
    efficiency cap + 60 s; before the seed is measured, from the scale's expected seconds."""
    from training.guards import Guards
    from training.scales import get_scale

    lim = Limits.for_evaluation("probe")
    assert lim.wall_s == max(600.0, 20 * get_scale("probe").expected_seconds) + 60.0
    assert lim.cpu_s > lim.wall_s and lim.threads == 1
    assert Limits.for_evaluation("explore").wall_s > lim.wall_s
    g = Guards.relative_to({"status": "ok", "scale": "probe", "cpu_seconds": 50.0, "wall_seconds": 60.0})
    lim = Limits.for_evaluation("probe", guards=g)
    assert g.cpu_limit_s == 400.0 and g.wall_limit_s == 1200.0
    assert lim.wall_s == 1260.0 and lim.cpu_s == 1.25 * 400.0 + 60.0


def test_cancel_event_kills_the_child(tmp_path):
    import threading

    cancel = threading.Event()
    started = threading.Event()

    def on_event(msg: dict) -> None:
        if msg.get("event") == "start" and msg.get("name") == "forward_backward":
            started.set()
            cancel.set()

    res = run_sandboxed("check", {"path": str(HOSTILE / "infinite_loop.py"), "scale": SCALE}, tmp_path / "run",
                        limits=Limits(wall_s=120), on_event=on_event, cancel=cancel)
    assert started.is_set() and not res.ok and res.reason == "cancelled by the caller"
    assert res.returncode == -9


def test_evaluate_accepts_a_scale_as_a_dict(tmp_path):
    """The engineer sends non-standard scales (e.g. scaled_down copies) as dataclass dicts."""
    import dataclasses
    import json

    from training.sandbox_child import scale_from_spec
    from training.scales import get_scale, scaled_down

    small = scaled_down("probe", 0.02)
    spec = json.loads(json.dumps(dataclasses.asdict(small), default=str))
    assert scale_from_spec(spec) == small and scale_from_spec("explore") == get_scale("explore")
    assert Limits.for_evaluation(spec).wall_s == max(600.0, 20 * small.expected_seconds) + 60.0


def test_scrubbed_environment_keeps_only_the_device_assignment(monkeypatch, tmp_path):
    from training.sandbox import Limits, _scrubbed_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    env = _scrubbed_env(tmp_path, Limits())
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env and env["HOME"] == str(tmp_path)


def test_child_dies_with_the_process_that_started_it(tmp_path):
    """A loop killed mid-evaluation leaves no sandboxed child behind (PR_SET_PDEATHSIG)."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    bomb = tmp_path / "slow.py"
    bomb.write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.p = nn.Linear(d_model, d_model)

            def forward(self, x):
                while True:
                    x = x + 0.0
    """))
    driver = textwrap.dedent(f"""
        from pathlib import Path
        from training.checker import check_file
        from training.sandbox import Limits
        check_file(Path("{bomb}"), "probe", run_dir=Path("{tmp_path / 'run'}"),
                   limits=Limits(wall_s=120, cpu_s=120))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=os.getcwd())
    pids: list[int] = []
    t0 = time.monotonic()
    while not pids and time.monotonic() - t0 < 30:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        time.sleep(0.2)
    assert pids, "the sandbox child never started"
    time.sleep(4.0)  # into the candidate's endless forward
    # the first child seen may be the short-lived `bwrap ... /bin/true` probe: take the children
    # alive now (the sandbox running the endless forward)
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()] or pids
    assert all(os.path.exists(f"/proc/{p}") for p in pids), "the child ended before the test could kill its parent"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.2)
    alive = [p for p in pids if os.path.exists(f"/proc/{p}")
             and "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
    assert not alive, f"sandbox children outlived their parent: {alive}"


def test_a_checkout_under_tmp_stays_visible_above_the_scratch(monkeypatch):
    """The scratch is a tmpfs at /tmp: a project (or venv) that lives under /tmp, as a CI clone
    may, is bound back read-only on top of it, outermost folder only; the run folder is not."""
    from training import sandbox as sb

    assert sb._bind_back("/tmp", ["/tmp/a", "/tmp/a/b", "/usr/lib", "/tmpx/c"]) == ["--ro-bind", "/tmp/a", "/tmp/a"]
    monkeypatch.setattr(sb, "PROJECT_ROOT", Path("/tmp/clone-of-asiarch"))
    flags = sb._bwrap_flags(1 << 20)
    scratch = flags.index("--tmpfs") + 1
    assert flags[scratch] == "/tmp"
    i = flags.index("/tmp/clone-of-asiarch")
    assert i > scratch and flags[i - 1] == "--ro-bind" and flags[i + 1] == "/tmp/clone-of-asiarch"


# ------------------------------------------------------------------ the GPU sandbox (no GPU needed)

def test_gpu_sandbox_binds_device_nodes_before_dev_goes_read_only(monkeypatch):
    monkeypatch.setattr(sandbox_mod, "gpu_device_nodes", lambda: ["/dev/nvidia0", "/dev/nvidiactl"])
    flags = sandbox_mod._bwrap_flags(1 << 20, gpu=True)
    i = flags.index("/dev/nvidia0")
    assert flags[i - 1] == "--dev-bind" and flags[i + 1] == "/dev/nvidia0"
    assert i < flags.index("--remount-ro") and "/dev/nvidiactl" in flags
    assert "--dev-bind" not in sandbox_mod._bwrap_flags(1 << 20, gpu=False)
    # a scale that asks for CUDA gets the GPU sandbox only where device nodes exist
    assert Limits.for_evaluation({"device": "cuda", "expected_seconds": 10}).gpu is True
    monkeypatch.setattr(sandbox_mod, "gpu_device_nodes", lambda: [])
    assert Limits.for_evaluation({"device": "cuda", "expected_seconds": 10}).gpu is False
    assert Limits.for_evaluation("probe").gpu is False


@pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap is not installed")
def test_gpu_sandbox_device_nodes_are_usable_inside_bwrap(monkeypatch):
    """The real bwrap with the GPU flags: a host character device not in bwrap's minimal /dev
    (standing in for /dev/nvidia0) is present inside, and the rest of /dev stays hidden."""
    import os
    import subprocess

    node = next((p for p in ("/dev/kmsg", "/dev/loop-control", "/dev/mem", "/dev/fuse") if os.path.exists(p)), None)
    if node is None:
        pytest.skip("no spare host device node to stand in for a GPU")
    monkeypatch.setattr(sandbox_mod, "gpu_device_nodes", lambda: [node])
    probe = f"test -c {node} && test ! -e /dev/sda && echo present"
    out = subprocess.run([bwrap_path(), *sandbox_mod._bwrap_flags(1 << 20, gpu=True), "--", "/bin/sh", "-c", probe],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "present", out.stderr
    out = subprocess.run([bwrap_path(), *sandbox_mod._bwrap_flags(1 << 20, gpu=False), "--", "/bin/sh", "-c",
                          f"test -e {node} || echo absent"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "absent", out.stderr


def test_gpu_sandbox_bounds_resident_memory_instead_of_address_space(tmp_path):
    """CUDA cannot run under RLIMIT_AS, so a GPU sandbox lifts it and the parent kills the run
    when the sandbox's resident memory passes the limit."""
    res = run_sandboxed("check", {"path": str(HOSTILE / "memory_bomb.py"), "scale": SCALE},
                        tmp_path / "run", limits=Limits(address_space_gib=1, wall_s=90, gpu=True))
    assert not res.ok
    assert res.reason.startswith("exceeded 1 GiB resident memory"), res.reason
