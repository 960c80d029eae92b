"""The research console driven with Textual's Pilot, over a real lab and the real loop
(built-in researcher; a fast fake executor stands in for training so each test takes seconds)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agents.loop import Loop
from asiarch_tui.app import ResearchConsole
from asiarch_tui.screens import ApprovalScreen, ConfirmScreen, HelpScreen, ReasonScreen
from asiarch_tui.panels import PlotPanel, StatusBar
from asiarch_tui.widgets import LineageTree
from tests.loop_helpers import FakeExecutor, make_lab


def run(coro):
    return asyncio.run(coro)


async def wait_for(pilot, cond, timeout: float = 30.0) -> None:
    """Let the app process messages until ``cond()`` holds."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def tree_ids(app) -> set[str]:
    return app.query_one(LineageTree).experiment_ids


def make_loop(lab, **kw) -> Loop:
    kw.setdefault("experiments", 1)
    return Loop(lab, llm="builtin", executor=kw.pop("executor", FakeExecutor()), backoff_s=0,
                baselines=("deltanet",), **kw)


def test_startup_on_a_fresh_lab_shows_the_seed(tmp_path):
    lab = make_lab(tmp_path / "lab")

    async def go():
        app = ResearchConsole(lab, None, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            assert tree_ids(app) == {"0000"}
            assert app.query_one(LineageTree).selected_id == "0000"
            status = app.query_one(StatusBar).render_status().plain
            # the seed is no experiment the loop ran: nothing is done yet
            assert "autonomous" in status and "0 done" in status

    run(go())


def test_node_appears_when_an_experiment_lands_and_populated_start(tmp_path):
    lab = make_lab(tmp_path / "lab")
    loop = make_loop(lab, experiments=2)

    async def go():
        app = ResearchConsole(lab, loop, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(tree_ids(app)) >= 4)  # seed, measured seed, 2 children
            await wait_for(pilot, lambda: app.state == "finished")
            tree = app.query_one(LineageTree)
            assert tree.best_id in tree_ids(app)
            assert "finished" in app.query_one(StatusBar).render_status().plain
            ids = tree_ids(app)
            await pilot.press("q")
        return ids

    ids = run(go())
    # a populated lab opens with every experiment in the tree
    lab2 = type(lab).open(lab.path)

    async def again():
        app = ResearchConsole(lab2, None, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            assert tree_ids(app) == ids
            # the lineage follows the archive: each node sits under its parent
            tree = app.query_one(LineageTree)
            for exp_id in tree.experiment_ids:
                rec = lab2.store.get(exp_id)
                if rec.parent:
                    assert tree.parent_of(exp_id) == rec.parent

    run(again())


def test_pause_and_resume(tmp_path):
    lab = make_lab(tmp_path / "lab")
    loop = make_loop(lab, experiments=3, executor=FakeExecutor(eval_delay_s=0.3))

    async def go():
        app = ResearchConsole(lab, loop, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.state == "running")
            await pilot.press("p")
            await wait_for(pilot, lambda: app.state == "paused")
            n = len(tree_ids(app))
            await pilot.pause(1.0)
            assert len(tree_ids(app)) == n  # nothing lands while paused
            await pilot.press("p")
            await wait_for(pilot, lambda: app.state in ("running", "finished"))
            await wait_for(pilot, lambda: app.state == "finished")
            assert len(tree_ids(app)) > n

    run(go())


def test_supervised_approve_and_reject(tmp_path):
    lab = make_lab(tmp_path / "lab", mode="supervised")
    loop = make_loop(lab, experiments=2)

    async def go():
        app = ResearchConsole(lab, loop, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen))
            first = app.pending_approval.exp_id
            await pilot.press("a")
            await wait_for(pilot, lambda: first in tree_ids(app))
            await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen))
            second = app.pending_approval.exp_id
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, ReasonScreen))
            await pilot.press(*"too similar to the parent", "enter")
            await wait_for(pilot, lambda: second in tree_ids(app))
            await wait_for(pilot, lambda: app.state == "finished")
        return first, second

    first, second = run(go())
    assert lab.store.get(first).status == "accepted"
    rejected = lab.store.get(second)
    assert rejected.status == "rejected" and "too similar to the parent" in str(rejected.to_dict())


def test_fork_from_the_selected_node(tmp_path):
    lab = make_lab(tmp_path / "lab")
    make_loop(lab, experiments=2).run()  # 0001 measured seed, 0002, 0003
    lab = type(lab).open(lab.path)
    loop = make_loop(lab, experiments=1)

    async def go():
        app = ResearchConsole(lab, loop, autostart=False, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            app.query_one(LineageTree).select_id("0000")
            await pilot.pause()
            await pilot.press("f")
            await pilot.press("p")  # start the loop opened paused
            await wait_for(pilot, lambda: len(tree_ids(app)) == 5)
            await wait_for(pilot, lambda: app.state == "finished")

    run(go())
    newest = max(r.id for r in lab.store.all())
    assert lab.store.get(newest).parent == "0000"


def test_help_screen_and_mode_switch(tmp_path):
    lab = make_lab(tmp_path / "lab")

    async def go():
        app = ResearchConsole(lab, None, clock=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("m")
            await pilot.pause()
            assert "supervised" in app.query_one(StatusBar).render_status().plain

    run(go())


def test_quit_mid_run_asks_and_the_next_start_resumes(tmp_path):
    lab = make_lab(tmp_path / "lab")
    loop = make_loop(lab, experiments=2, executor=FakeExecutor(eval_delay_s=2.0))

    async def go():
        app = ResearchConsole(lab, loop, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.in_flight is not None and app.in_flight != "0001"
                           and "evaluate" in str(app.query_one("#stage").render()))
            in_flight = app.in_flight
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await pilot.pause()
        return in_flight

    in_flight = run(go())
    assert loop.join(10)
    assert in_flight not in lab.store  # not committed: left resumable
    assert (Path(lab.path) / "runs" / in_flight).exists()
    lab2 = type(lab).open(lab.path)
    summary = make_loop(lab2, experiments=1).run()
    assert summary.experiments[0]["id"] == in_flight  # the experiment in flight is redone
    assert lab2.store.get(in_flight).status == "accepted"


def test_training_lines_drive_the_progress_bar_and_the_loss_plot(tmp_path):
    from textual.widgets import ProgressBar

    from agents import events as ev
    from asiarch_tui.app import LoopEvent

    lab = make_lab(tmp_path / "lab")

    async def go():
        app = ResearchConsole(lab, None, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            app.post_message(LoopEvent(ev.ExperimentStarted(exp_id="0001", parent="0000")))
            for step, loss in ((60, 3.1), (120, 2.4)):
                app.post_message(LoopEvent(ev.LogLine(exp_id="0001", source="train",
                                                      line=f"[lm] step {step}/300 loss {loss} lr 1e-3")))
                app.post_message(LoopEvent(ev.MetricPoint(exp_id="0001", name="lm_loss", step=step, value=loss)))
            await pilot.pause()
            bar = app.query_one(ProgressBar)
            assert (bar.progress, bar.total) == (120, 300)
            plots = app.query_one(PlotPanel)
            assert plots.loss_label == "lm" and plots.loss_points == [(60, 3.1), (120, 2.4)]
            # a new phase starts a new curve
            app.post_message(LoopEvent(ev.MetricPoint(exp_id="0001", name="mqar_loss", step=10, value=4.0)))
            await pilot.pause()
            assert plots.loss_label == "mqar" and plots.loss_points == [(10, 4.0)]

    run(go())


def test_archive_search_finds_experiments_by_motivation(tmp_path):
    from textual.widgets import DataTable

    from asiarch_tui.screens import SearchScreen

    lab = make_lab(tmp_path / "lab")
    make_loop(lab, experiments=2).run()
    lab = type(lab).open(lab.path)
    wanted = {r.id for r in lab.store.all() if "delta rule" in (r.motivation + r.problem).lower()}
    assert wanted

    async def go():
        app = ResearchConsole(lab, None, clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("slash")
            await pilot.pause()
            assert isinstance(app.screen, SearchScreen)
            await pilot.press(*"delta rule", "enter")
            await app.workers.wait_for_complete()  # the search runs in a worker thread
            await pilot.pause()
            table = app.screen.query_one(DataTable)
            assert {str(k.value) for k in table.rows} == wanted
            await pilot.press("escape")

    run(go())
