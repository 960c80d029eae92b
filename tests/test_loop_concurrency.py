"""N experiments in flight (``[executor] concurrency``): evaluations in parallel, everything else
sequential in the loop's thread, commits in completion order with correct lineage; stop and
redo with several in flight. A fake executor (no sandbox) keeps these fast; the real sandbox under
Ray is in test_ray_executor.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from agents.events import ExperimentFinished, ExperimentStarted, StageChanged
from agents.loop import Loop
from tests.loop_helpers import FakeExecutor, make_lab


class GatedExecutor(FakeExecutor):
    """Counts evaluations running at once; the first ``slow`` evaluations take ``slow_s``, the
    others ``fast_s`` (so a later experiment can finish first)."""

    def __init__(self, slow: int = 1, slow_s: float = 1.0, fast_s: float = 0.1, baseline_s: float = 0.0) -> None:
        super().__init__()
        self.slow, self.slow_s, self.fast_s, self.baseline_s = slow, slow_s, fast_s, baseline_s
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.calls = 0
        self.order: list[str] = []  # experiment ids in the order their evaluations started

    def evaluate(self, path, run_dir, seed, baseline, on_line=None, trusted=False):
        baseline_run = "baselines" in Path(run_dir).parts
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            if not baseline_run:
                self.order.append(Path(run_dir).parent.name)  # runs/<id>/eval_rN
            n = len(self.order)
        try:
            time.sleep(self.baseline_s if baseline_run else self.slow_s if n <= self.slow else self.fast_s)
            return super().evaluate(path, run_dir, seed, baseline, on_line)
        finally:
            with self.lock:
                self.running -= 1


def _lineage_ok(lab) -> None:
    store = lab.store
    for e in store.entries():
        rec = store.get(e.id)
        if rec.parent is None:
            continue
        assert rec.parent in store, f"{e.id}: parent {rec.parent} is not in the archive"
        assert e.parent_commit == store.commit_of(rec.parent), f"{e.id}: the commit's first parent is not its parent's"
        assert store.parent_id(e.id) == rec.parent
        for ref in rec.references:
            assert ref in store


def test_two_in_flight_commit_in_completion_order(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    ex = GatedExecutor(slow=1, slow_s=1.5, fast_s=0.05)
    loop = Loop(lab, llm="builtin", executor=ex, experiments=5, baselines=("deltanet",), concurrency=2)
    events = []
    loop.subscribe(events.append)
    summary = loop.run()
    assert summary.state == "finished", [getattr(e, "message", "") for e in events if type(e).kind == "Warning"]
    assert len(summary.experiments) == 5
    assert ex.max_running == 2, "two evaluations never ran at once"
    started = [e.exp_id for e in events if isinstance(e, ExperimentStarted)]
    finished = [e.exp_id for e in events if isinstance(e, ExperimentFinished) and e.reason != "seed measured"]
    assert len(set(started)) == 5 and sorted(finished) == sorted(started)
    # the first evaluation is slow: the next one is committed before it (completion order)
    slow, nxt = ex.order[0], ex.order[1]
    assert finished.index(nxt) < finished.index(slow)
    # the next proposal was made while the slow one was in flight
    slow_done = next(i for i, e in enumerate(events) if isinstance(e, ExperimentFinished) and e.exp_id == slow)
    nxt_start = next(i for i, e in enumerate(events) if isinstance(e, ExperimentStarted) and e.exp_id == nxt)
    assert nxt_start < slow_done
    ids = [e["id"] for e in summary.experiments]
    assert len(set(ids)) == 5 and all(i in lab.store for i in ids)
    _lineage_ok(lab)
    assert not list((lab.path / "runs").glob("*/state.json"))
    # sampling, research and novelty stay sequential: never two of them at once
    active: set[tuple[str, str]] = set()
    for e in events:
        if isinstance(e, StageChanged) and e.stage in ("sample", "research", "novelty"):
            if e.status == "started":
                assert not active, f"{e.exp_id} {e.stage} started while {active} ran"
                active.add((e.exp_id, e.stage))
            else:
                active.discard((e.exp_id, e.stage))
    lab.close()


def test_baselines_are_measured_concurrently_too(tmp_path: Path) -> None:
    """The seed first (experiments wait for it), the comparisons left at the end of the run
    as many at once as experiments may be in flight."""
    lab = make_lab(tmp_path / "lab")
    ex = GatedExecutor(baseline_s=0.5)
    loop = Loop(lab, llm="builtin", executor=ex, baselines=("deltanet", "linear_attention", "gla", "retnet"),
                concurrency=2, experiments=0)
    assert loop.measure_seed() is not None and set(loop.baselines()) == {"deltanet"}
    loop._measure_remaining_baselines()
    measured = loop.baselines()
    assert set(measured) == {"deltanet", "linear_attention", "gla", "retnet"}
    assert all(m["status"] == "ok" for m in measured.values())
    assert ex.max_running == 2
    cached = json.loads((lab.path / "baselines" / "probe.json").read_text())
    assert set(cached) == set(measured)
    lab.close()


def test_concurrency_from_config_and_sequential_default(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    assert Loop(lab, llm="builtin", executor=FakeExecutor()).concurrency == 1
    lab.config.executor.concurrency = 3
    assert Loop(lab, llm="builtin", executor=FakeExecutor()).concurrency == 3
    lab.close()


def test_stop_with_two_in_flight_then_redo(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab")
    ex = GatedExecutor(slow=100, slow_s=1.5)
    loop = Loop(lab, llm="builtin", executor=ex, experiments=4, baselines=("deltanet",), concurrency=2)
    loop.start()
    t_end = time.monotonic() + 60
    while ex.running < 2 and time.monotonic() < t_end:
        time.sleep(0.02)
    assert ex.running == 2
    loop.stop()
    assert loop.join(60)
    assert loop.summary.state == "stopped"
    pending = sorted(p.parent.name for p in (lab.path / "runs").glob("*/state.json"))
    assert len(pending) == 2, pending
    assert not any(i in lab.store for i in pending)
    # the next start redoes both, with their ids, then goes on
    ex2 = GatedExecutor(slow=0, fast_s=0.05)
    loop2 = Loop(lab, llm="builtin", executor=ex2, experiments=3, baselines=("deltanet",), concurrency=2)
    events = []
    loop2.subscribe(events.append)
    summary = loop2.run()
    assert summary.state == "finished"
    redone = sorted(e.exp_id for e in events if isinstance(e, ExperimentStarted) and e.redo)
    assert redone == pending
    assert all(i in lab.store for i in pending)
    assert len(summary.experiments) == 3
    _lineage_ok(lab)
    lab.close()
