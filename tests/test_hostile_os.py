"""The OS boundary: every hostile candidate twice - with the static check on (stopped, for the right
reason) and with it off (then bubblewrap, seccomp and the harness alone must contain it: nothing
written outside the run folder, no connection to a listener on 127.0.0.1, no secret in any output,
no process left) - plus forged verdicts, floods, daemons, and the refusal without bubblewrap."""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from pathlib import Path

import pytest

from training import sandbox as sandbox_mod
from training.checker import CHECK_NAMES, _scale_config, check_file
from training.sandbox import INNER_CANDIDATE, Limits, SandboxError, bwrap_path, run_sandboxed
from tests.engine_helpers import listener

HOSTILE = Path(__file__).parent / "hostile"
SCALE = _scale_config("probe")
# cheap dynamic checks: the attacks happen when the mixer is built
QUICK = {"lengths": [64, 128, 256], "time_budget_s": 0.3, "causal_len": 32}
SECRET = "TOPSECRET-7f3a9c"

needs_bwrap = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap is not installed or cannot run here")

#: hostile file -> (check that fails with the static check on, text in its reason)
STATIC_STOPS = {
    "escape_import_os": ("imports", "import os"),
    "escape_socket": ("imports", "import socket"),
    "escape_open_file": ("imports", "`open` is not allowed"),
    "escape_builtins_getattr": ("imports", "__builtins__"),
    "escape_class_chain": ("imports", ".__subclasses__"),
    "escape_runtime": ("imports", ".os"),
    "escape_dynamic_getattr": ("build", "sandbox:"),
    "monkeypatch_alias": ("build", "modified torch.isfinite"),
    "escape_guard_off": ("imports", "'operator'"),
    "escape_type_hints": ("imports", "get_type_hints"),
    "escape_torch_writer": ("imports", "_open_zipfile_writer: private attributes"),
    "escape_nsenter": ("imports", "attrgetter"),
    "escape_daemon": ("imports", "attrgetter"),
    "escape_hijack_import": ("imports", "attrgetter"),
    "forged_verdict": ("imports", "attrgetter"),
    "event_flood": ("imports", "attrgetter"),
    "scratch_fill": ("imports", "attrgetter"),
    "escape_str_subclass": ("imports", "subclassing str is not allowed"),
    "forged_metrics": ("imports", "attrgetter"),
}
#: files the OS must contain with the static check off, and the check that must then fail (None:
#: the candidate is a valid mixer apart from its attack, so its verdict may be a pass)
OS_CASES = {
    "escape_runtime": "build",
    "escape_dynamic_getattr": "build",
    "escape_guard_off": None,
    "escape_type_hints": None,
    "escape_torch_writer": None,
    "escape_nsenter": None,
    "escape_daemon": None,
    "escape_hijack_import": None,
    "forged_verdict": "causality",
    "event_flood": "causality",
    "scratch_fill": None,
    "escape_str_subclass": None,
}




def _materialise(tmp_path: Path, name: str, outside: Path, port: int, secret: Path) -> Path:
    src = (HOSTILE / f"{name}.py").read_text()
    src = src.replace("ESCAPE_DIR", str(outside)).replace("45678", str(port)).replace("SECRET_FILE", str(secret))
    path = tmp_path / f"{name}.py"
    path.write_text(src)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _sandbox_processes() -> list[int]:
    """Processes that belong to a sandbox started by this test process (bwrap, or a Python whose
    command line names the sandbox's candidate or the daemon's marker)."""
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        if "sleep 1717" in cmd or "daemon_alive" in cmd or (
                "--pidns" in cmd and "training.sandbox_child" in cmd and _descends_from(int(pid), int(me))):
            out.append(int(pid))
    return out


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


@pytest.mark.parametrize("name", sorted(STATIC_STOPS))
def test_static_check_on_stops_each_hostile_case_for_the_right_reason(name, tmp_path):
    check, needle = STATIC_STOPS[name]
    outside = tmp_path / "outside"
    outside.mkdir()
    cand = _materialise(tmp_path, name, outside, 1, tmp_path / "secret.txt")
    report = check_file(cand, "probe", run_dir=tmp_path / "run", options={**QUICK, "keep_going": False},
                        limits=Limits(wall_s=120))
    assert not report.passed
    c = {x.name: x for x in report.checks}[check]
    text = c.reason + "; ".join(c.details.get("violations", []))
    assert not c.passed and needle in text, (check, text)
    assert list(outside.iterdir()) == []


@needs_bwrap
@pytest.mark.parametrize("name", sorted(OS_CASES))
def test_static_check_off_the_os_boundary_alone_contains_it(name, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    srv = listener()
    try:
        cand = _materialise(tmp_path, name, outside, srv.getsockname()[1], secret)
        before = _tree(tmp_path)
        maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "static_check": False, "options": QUICK},
                            tmp_path / "run", limits=Limits(wall_s=150))
        grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) / 1024
        with pytest.raises(socket.timeout):
            conn, _ = srv.accept()
            conn.close()
    finally:
        srv.close()
    assert res.isolation == "bwrap"
    # nothing written outside the run folder, which holds only the parent's copy and log
    assert list(outside.iterdir()) == []
    assert {p for p in _tree(tmp_path) - before if not p.startswith("run")} == set()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["check.log", "mixer.py"]
    # no secret in any output
    text = res.log_path.read_text(errors="replace") + repr(res.result) + repr(res.events) + str(res.reason)
    assert SECRET not in text and "HIJACKED-MARKER" not in text
    # the verdict is the harness's: every dynamic check came from it; a forged "ok" changes nothing
    expected_fail = OS_CASES[name]
    if expected_fail is not None:
        assert not res.ok
        checks = {c["name"]: c for c in (res.result or {}).get("checks", [])}
        assert "forged" not in repr(checks)
        if checks:
            assert not checks[expected_fail]["passed"], checks[expected_fail]
    # the parent's memory stayed bounded (a flood cannot grow it)
    assert grew_mib < 300, f"the parent grew by {grew_mib:.0f} MiB"
    # no process left
    deadline = time.monotonic() + 5
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sandbox_processes() == []


@needs_bwrap
def test_a_daemon_does_not_outlive_the_check(tmp_path):
    """Double fork + setsid, a detached shell, a new-session subprocess: 15 s after check returns
    nothing has acted and nothing runs."""
    outside = tmp_path / "outside"
    outside.mkdir()
    srv = listener()
    try:
        cand = _materialise(tmp_path, "escape_daemon", outside, srv.getsockname()[1], tmp_path / "secret.txt")
        res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "static_check": False,
                                      "options": {**QUICK, "keep_going": False}},
                            tmp_path / "run", limits=Limits(wall_s=150))
        returned = time.monotonic()
        while time.monotonic() - returned < 15:
            time.sleep(0.5)
        with pytest.raises(socket.timeout):
            conn, _ = srv.accept()
            conn.close()
    finally:
        srv.close()
    assert res.result is not None, res.reason
    assert list(outside.iterdir()) == []
    assert _sandbox_processes() == []
    log = res.log_path.read_text()
    assert "blocked fork PermissionError" in log  # seccomp refused the fork in the worker


@needs_bwrap
def test_forged_verdict_changes_nothing(tmp_path):
    """A non-causal, quadratic mixer writes fake passing results to every descriptor it can reach
    (its own, and its harness's through /proc): the verdict is still the harness's, a failure."""
    outside = tmp_path / "outside"
    outside.mkdir()
    cand = _materialise(tmp_path, "forged_verdict", outside, 1, tmp_path / "secret.txt")
    res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "static_check": False, "options": QUICK},
                        tmp_path / "run", limits=Limits(wall_s=150))
    assert not res.ok and res.result is not None and res.result["ok"] is False
    checks = res.result["checks"]
    assert [c["name"] for c in checks] == list(CHECK_NAMES[2:])
    assert not any(c["passed"] and c["name"] == "causality" for c in checks)
    assert "forged" not in repr(checks) + repr(res.events)


def test_the_parent_reads_a_bounded_channel(tmp_path):
    """The parent's reader of the result pipe: a flood of events or a giant line is cut off with a
    clear reason; memory stays bounded; a second result message is a failure."""
    from training.sandbox import _Channel

    def feed(data_chunks: list[bytes], limits: Limits) -> _Channel:
        r, w = os.pipe()
        ch = _Channel(r, limits, None, lambda: None)
        t = threading.Thread(target=ch.read)
        t.start()
        with os.fdopen(w, "wb") as fh:
            for c in data_chunks:
                try:
                    fh.write(c)
                except BrokenPipeError:
                    break
        t.join(30)
        return ch

    event = b'{"event": "progress", "fraction": 0.1}\n'
    ch = feed([event * 10000] * 30, Limits(max_events=1000))
    assert ch.flood and "more than 1000 messages" in ch.flood and len(ch.events) == 1000
    ch = feed([b'{"event": "x", "pad": "' + b"y" * (8 * 1024 * 1024)], Limits(max_message_kib=64))
    assert ch.flood and "larger than 64 KiB" in ch.flood and ch.events == []
    ch = feed([b'{"event": "result", "ok": true}\n' * 2], Limits())
    assert ch.flood == "the sandbox sent more than one result message"


def test_untrusted_code_is_refused_without_bubblewrap(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from asiarch_tui.cli import app

    monkeypatch.setattr(sandbox_mod, "_bwrap_status", lambda: (None, "bubblewrap (`bwrap`) is not installed"))
    cand = HOSTILE / "valid_cummean.py"
    with pytest.raises(SandboxError, match="install bubblewrap.*--unsafe-no-sandbox"):
        run_sandboxed("check", {"path": str(cand), "scale": SCALE}, tmp_path / "run")
    out = CliRunner().invoke(app, ["check", str(cand)])
    assert out.exit_code == 2 and "refusing to run untrusted code" in out.output
    # trusted code (the project's own) and the explicit flag still run, without the OS boundary
    res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "options": QUICK}, tmp_path / "run2",
                        limits=Limits(wall_s=150), trusted=True)
    assert res.ok and res.isolation == "none", res.reason
    res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "options": QUICK}, tmp_path / "run3",
                        limits=Limits(wall_s=150, unsafe_no_sandbox=True))
    assert res.ok and res.isolation == "none", res.reason


@needs_bwrap
def test_inside_the_sandbox_the_candidate_sees_a_private_world(tmp_path):
    """The candidate is bound read-only at INNER_CANDIDATE; the run folder on the host stays empty
    of anything the child writes; the interpreter is isolated (-I) and the harness pre-imported
    sympy before the worker started."""
    cand = tmp_path / "probe_world.py"
    cand.write_text('''import torch
import torch.nn as nn
import typing


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        sys = typing.operator.attrgetter("sys")(torch)
        print("FLAGS", sys.flags.isolated, sys.flags.no_user_site, "" in sys.path or "." in sys.path)
        print("SYMPY", "sympy" in sys.modules, "FILE", __file__)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
''')
    res = run_sandboxed("check", {"path": str(cand), "scale": SCALE, "static_check": False,
                                  "options": {**QUICK, "keep_going": False}}, tmp_path / "run",
                        limits=Limits(wall_s=150))
    log = res.log_path.read_text()
    assert "FLAGS 1 1 False" in log and f"SYMPY True FILE {INNER_CANDIDATE}" in log, log[-2000:]


@needs_bwrap
@pytest.mark.parametrize("name, needle", [
    ("forged_metrics", "the harness measured"),
    ("noncausal_reverse_cumsum", "non-causal (found after training): the trained "),
])
def test_the_harness_verifies_an_evaluation(name, needle, tmp_path):
    """The worker trains; the harness recomputes probe accuracies (and at explore the validation
    loss) from the trained models' logits, and checks their causality in the scored configuration:
    a candidate that fakes its numbers, or a non-causal one evaluated without a check, fails with
    the harness's reason."""
    cand = _materialise(tmp_path, name, tmp_path, 1, tmp_path / "secret.txt")
    res = run_sandboxed("evaluate", {"path": str(cand), "scale": "probe", "scale_factor": 0.02, "seed": 0,
                                     "static_check": False}, tmp_path / "run", limits=Limits(wall_s=300))
    assert not res.ok and needle in (res.reason or ""), res.reason
