"""End to end: the real console in a pseudo-terminal (tmux), keys pressed, screen read back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

EXE = Path(sys.executable).parent / "asiarch-tui"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=20).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_screen(session: str, text: str, timeout: float = 60.0) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        out = screen(session)
        if text in out:
            return out
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen(session)}")


def test_console_in_a_pty_creates_a_demo_lab_and_answers_keys(tmp_path):
    session = f"asiarch-{uuid.uuid4().hex[:8]}"
    lab = tmp_path / "lab"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    cmd = f"cd {tmp_path} && {EXE} lab --paused; echo EXITED-$?; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", cmd],
                   check=True, env=env, timeout=20)
    try:
        out = wait_screen(session, "lineage", timeout=90)
        assert "DeltaNet" in out and "autonomous" in out
        assert (lab / "asiarch.toml").exists() and (lab / "archive").exists()
        tmux("send-keys", "-t", session, "?")
        wait_screen(session, "asiarch — keys")
        out = wait_screen(session, "git show")  # the tree's keys are listed after the console's
        assert "fork" in out
        tmux("send-keys", "-t", session, "Escape")
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "m")
        wait_screen(session, "supervised")
        tmux("send-keys", "-t", session, "g")
        wait_screen(session, "git show exp/0000")
        tmux("send-keys", "-t", session, "Escape")
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "q")
        wait_screen(session, "EXITED-0")
    finally:
        tmux("kill-session", "-t", session)
