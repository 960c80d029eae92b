"""SVG snapshots of the main screen at 80x24 and 160x48 (pytest-textual-snapshot).

The lab is made deterministically: the built-in researcher with a fixed seed and a fake executor
whose metrics are a hash of the code, so names, fitnesses and the tree are the same every run.
Update the snapshots after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import pytest

from agents.loop import Loop
from asiarch_tui.app import ResearchConsole
from tests.loop_helpers import FakeExecutor, make_lab


@pytest.fixture(scope="module")
def populated_lab(tmp_path_factory):
    lab = make_lab(tmp_path_factory.mktemp("snap") / "lab")
    Loop(lab, llm="builtin", executor=FakeExecutor(), experiments=4, backoff_s=0,
         baselines=("deltanet",)).run()
    return type(lab).open(lab.path)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_main_screen_snapshot(snap_compare, populated_lab, size):
    app = ResearchConsole(populated_lab, None, clock=False)
    assert snap_compare(app, terminal_size=size)
