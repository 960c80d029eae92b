"""The yardstick side of the loop: the reference baselines and the seed measured at the lab's
scale (``lab/baselines/<scale>.json``), the seeds of a design and how many run at once, the seed
record measured and committed once per scale, and scoring a record against the yardstick (the
judge's verdict, the fitness, the promotion rule at commit). ``agents.loop.Loop`` mixes this in;
the pure scoring rules are in ``agents.yardstick``, ``agents.seeds`` and ``agents.stats``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from agents.engineer import with_trust
from agents.events import BaselineProgress, ExperimentFinished, LogLine, StageChanged
from agents.judge import BuiltinJudge, LLMJudge
from agents.llm import CallRecorder
from agents.records import param_budget, scale_name, summary, utc
from agents.seeds import combine as combine_seeds
from agents.yardstick import (
    Yardstick,
    baseline_key,
    baselines_path,
    is_complete,
    load_baselines,
    make_yardstick,
    missing_reason,
    needs_rescore,
    rescore_lab,
    score,
)

__all__ = ["BaselinesMixin"]


class BaselinesMixin:
    """Baselines, the seed, seed scheduling and scoring of a ``Loop`` (uses its ``lab``,
    ``scale``, ``seed``, ``n_seeds``, ``executor``, ``judge_agent``, locks and ``emit``)."""

    # ------------------------------------------------------------------ baselines and seed
    def _baseline_file(self) -> Path:
        return baselines_path(self.path, self.scale)

    def _baseline_names(self) -> list[str]:
        """The seed first, then the configured reference mixers."""
        from training.mixers import REFERENCE_MIXERS, SEED_MIXER

        names = list(self.baseline_names) if self.baseline_names is not None else list(REFERENCE_MIXERS)
        names = [n for n in names if n != SEED_MIXER]
        return [SEED_MIXER, *names]

    def _cached_baselines(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._baselines is None:
                self._baselines = load_baselines(self.path, self.scale)
            return self._baselines

    def _all_seeds(self, metrics: dict[str, Any] | None) -> bool:
        """A complete measurement on every seed of the schedule (``[loop] seeds``), made under
        this version's evaluation protocol (``training.evaluate.EVAL_VERSION``)."""
        from training.evaluate import EVAL_VERSION, eval_version

        if not is_complete(metrics) or eval_version(metrics) != EVAL_VERSION:
            return False
        got = {e.get("seed") for e in ((metrics or {}).get("seeds") or [metrics]) if e.get("status") == "ok"}
        return set(self._seed_list()) <= got

    def baselines(self) -> dict[str, dict[str, Any]]:
        """The reference baselines measured so far at the loop's scale (complete measurements on
        every seed of the schedule only; cached in ``lab/baselines/<scale>.json``). Measures
        nothing: the seed is measured by :meth:`measure_seed` before any experiment, the others
        between experiments (:meth:`measure_pending_baselines`)."""
        return {n: m for n, m in self._cached_baselines().items() if self._all_seeds(m)}

    def measure_baseline(self, name: str, index: int = 0, total: int = 0) -> dict[str, Any]:
        """Evaluate one reference mixer at the loop's scale, store and return its metrics."""
        from archive.config import atomic_write_text
        from training.mixers import REFERENCE_MIXERS, SEED_MIXER

        self.poll()
        is_seed = name == SEED_MIXER
        t0 = time.perf_counter()
        self.emit(BaselineProgress(name=name, status="started", seed=is_seed, index=index, total=total))
        self.emit(StageChanged(stage="baseline", status="started", detail=name))
        rd = self._runs() / "baselines" / baseline_key(self.scale) / name
        seeds = self._seed_list()
        before = self._cached_baselines().get(name) or {}
        # runs of this reference already measured on seeds of the schedule (under this evaluation
        # protocol) are kept
        from training.evaluate import EVAL_VERSION, eval_version

        runs = {r.get("seed"): r for r in (before.get("seeds") or [before])
                if r.get("status") == "ok" and r.get("seed") in seeds and not r.get("partial")
                and eval_version(r) == EVAL_VERSION}
        error = ""
        # the same seeds as every design in the top, so the yardstick has a spread. All of them
        # at once (see _seed_width: 3 fixed-work runs time-sliced on 2 cores end after 1.5 run
        # times, where the first alone and then two side by side take 2): the seed blocks the
        # first result, and a reference is our own code, which does not fail for its design.
        # Where they cannot all run at once, the first runs alone (a failure costs one run).
        todo = [sd for sd in seeds if sd not in runs]
        waves = [todo] if self._seed_width(len(todo)) >= len(todo) or runs else [todo[:1], todo[1:]]
        for wave in (w for w in waves if w):
            results = self._evaluate_seeds(Path(REFERENCE_MIXERS[name]), wave, lambda sd: rd / f"seed-{sd}", None,
                                           lambda l: self.emit(LogLine(source="train", line=l)),
                                           trusted=True)  # our own code
            for sd in wave:
                res = results[sd]
                runs[sd] = res.metrics or {"status": "error", "error": res.error, "partial": True, "seed": sd}
                runs[sd].setdefault("seed", sd)
                error = error or res.error
            if not all(is_complete(runs[sd]) for sd in wave):
                break
        metrics = combine_seeds([runs[sd] for sd in seeds if sd in runs])
        with self._lock:
            cached = self._cached_baselines()
            cached[name] = metrics
            path = self._baseline_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(cached, indent=1, default=str))
        ok = is_complete(metrics)
        pm = metrics.get("probe_mean")
        detail = (f"{name}: probe mean {pm:.3f}" if isinstance(pm, (int, float)) else f"{name}: {metrics.get('status')}")
        if not ok:
            detail += f" ({metrics.get('stop_reason') or metrics.get('error') or error or 'incomplete'})"
        detail += f" ({metrics.get('n_seeds')} seeds)"
        self.emit(StageChanged(stage="baseline", status="finished" if ok else "failed", detail=detail[:500],
                               duration_s=time.perf_counter() - t0))
        self.emit(BaselineProgress(name=name, status="finished", seed=is_seed, index=index, total=total,
                                   result=str(metrics.get("status")), detail=detail[:500]))
        return metrics

    def yardstick(self) -> Yardstick | None:
        """The yardstick (the seed's complete metrics at the loop's scale), or None."""
        from training.mixers import SEED_MIXER

        seed = self._cached_baselines().get(SEED_MIXER)
        if not self._all_seeds(seed):
            return None
        return make_yardstick(seed, self.scale)

    def yardstick_missing(self) -> str | None:
        """Why there is no yardstick (None when there is one)."""
        from training.mixers import SEED_MIXER

        seed = self._cached_baselines().get(SEED_MIXER)
        why = missing_reason(seed, self.scale)
        if why is None and not self._all_seeds(seed):
            return f"the seed has not been measured on all {self.n_seeds} seeds yet"
        return why

    def measure_seed(self, attempts: int = 2) -> Yardstick | None:
        """Measure the seed at the loop's scale unless a complete measurement is cached (up to
        ``attempts`` tries); experiments wait for it. Returns the yardstick, or None."""
        from training.mixers import SEED_MIXER

        for _ in range(max(1, attempts)):
            ys = self.yardstick()
            if ys is not None:
                return ys
            with self._lock:
                self._set_state("running", f"measuring the seed ({SEED_MIXER}) at scale "
                                           f"{baseline_key(self.scale)}: experiments wait for it")
            self.measure_baseline(SEED_MIXER)
        return self.yardstick()

    def pending_baselines(self) -> list[str]:
        """Reference baselines (not the seed) without a complete measurement that this run has
        not tried yet."""
        cached = self._cached_baselines()
        return [n for n in self._baseline_names()[1:]
                if not self._all_seeds(cached.get(n)) and n not in self._baselines_tried]

    def measure_pending_baselines(self, limit: int | None = None) -> int:
        """Measure up to ``limit`` (None: all) pending reference baselines, one at a time per
        caller (several workers may each take one); returns how many were measured."""
        done = 0
        while limit is None or done < limit:
            with self._lock:
                pending = self.pending_baselines()
                if not pending:
                    return done
                name = pending[0]
                self._baselines_tried.add(name)
                others = self._baseline_names()[1:]
                index = len([n for n in others if n in self._baselines_tried])
            self.measure_baseline(name, index=index, total=len(others))
            done += 1
        return done

    def _measure_remaining_baselines(self) -> None:
        """Every pending comparison, as many at once as experiments may be in flight."""
        if self.concurrency > 1 and len(self.pending_baselines()) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="asiarch-baseline") as pool:
                for fut in [pool.submit(self.measure_pending_baselines) for _ in range(self.concurrency)]:
                    fut.result()  # LoopStopped or an executor error propagates
        else:
            self.measure_pending_baselines()

    def seed_baseline(self) -> dict[str, Any] | None:
        """The seed mixer's complete metrics at this scale (the yardstick), or None."""
        ys = self.yardstick()
        return ys.metrics if ys is not None else None

    def evaluation_baseline(self) -> dict[str, Any] | None:
        """What an experiment's evaluation is measured against: the seed's metrics (the guards,
        the loss rule's curve) with ``leak_reference``, the leak monitor's references condensed
        from the complete baselines measured so far (``training.leak_monitor.leak_reference``:
        softmax attention's per-probe means and spreads, the loss rule's calibrated tolerance)."""
        from training.leak_monitor import leak_reference
        from training.mixers import SEED_MIXER

        seed = self.seed_baseline()
        if seed is None:
            return None
        return {**seed, "leak_reference": leak_reference(self.baselines(), SEED_MIXER)}

    def rescore_if_needed(self) -> dict[str, Any] | None:
        """Re-score the archive when its fitness was computed against another yardstick (a
        re-measured seed, another scale, an upgrade); returns the re-score report or None."""
        ys = self.yardstick()
        if not hasattr(self.lab, "apply_scores") or not needs_rescore(self.lab, ys):
            return None
        with self._novelty_lock:
            report = rescore_lab(self.lab, self.scale)
        self.emit(LogLine(source="loop", line=(
            f"re-scored {report['rescored']} experiments against yardstick {report['yardstick']}"
            + (f"; best moved {report['best_before']} -> {report['best']}" if report["best_moved"] else ""))))
        return report

    def ensure_seed_measured(self) -> None:
        """A new lab's seed (committed unmeasured) gets its metrics from the seed baseline
        (the same file evaluated at the same scale and seed) and is committed as measured,
        once per scale."""
        store = self.lab.store
        from archive.record import SEED_ID

        if SEED_ID not in store:
            return
        ys = self.yardstick()
        if ys is None:
            return
        seed = store.get(SEED_ID)
        measured = [r for r in store.all() if r.extra.get("measures") == SEED_ID
                    and (r.metrics or {}).get("scale") == ys.scale_name]
        if measured or ((seed.metrics or {}).get("scale") == ys.scale_name and is_complete(seed.metrics)):
            return
        base = ys.metrics
        rec = dataclasses.replace(
            seed, id=store.next_id(), parent=SEED_ID, references=[], metrics=base,
            yardstick=ys.version, scale=scale_name(self.scale), created=utc(),
            analysis="The seed design measured at this scale: the yardstick of every fitness.",
            problem=seed.problem or "recall probes and loss of the seed at this scale",
            extra={**seed.extra, "measures": SEED_ID}, transcript=[], timings={})
        rec.slug = ""
        rec.__post_init__()
        rec.reproduce = self._reproduce_info(rec)
        # the seed is judged by the same judge as every candidate (not a flat 0.5)
        seed_recorder = CallRecorder(exp_id=rec.id, emit=self.emit)
        verdict = self._judge_record(rec, None, base, seed_recorder)
        rec.transcript = seed_recorder.transcript
        rec.extra["agent_steps"] = seed_recorder.steps  # its judge step counts like any other
        self._score(rec, verdict, ys)
        fitness, comps = rec.fitness, rec.fitness_components
        sha = self._commit(rec)
        self.emit(ExperimentFinished(exp_id=rec.id, name=rec.name, status="accepted", fitness=fitness,
                                     fitness_components=comps, metrics=summary(base), sha=sha,
                                     reason="seed measured",
                                     promotion=str((rec.promotion or {}).get("outcome") or "")))

    # ------------------------------------------------------------------ the seeds of a design
    def _seed_list(self) -> list[int]:
        """The seeds of a design measured in full (and of the yardstick): seed, seed+1, ..."""
        from agents.stats import design_seeds

        return design_seeds(self.seed, self.n_seeds)

    def seed_parallelism(self) -> int:
        """How many evaluations of one design's seeds run at once: the machine's cores shared by
        the loop's workers (each sandboxed evaluation uses one thread; see ``Limits``)."""
        import os

        return max(1, (os.cpu_count() or 1) // max(1, self.concurrency))

    def _seed_width(self, n: int) -> int:
        """How many of ``n`` seed evaluations run at once: :meth:`seed_parallelism`, or all ``n``
        when that is at most twice as many (a fixed-work run time-sliced with others takes longer
        but does the same work, so 3 runs on 2 cores end after 1.5 run times instead of 2)."""
        par = self.seed_parallelism()
        return n if 2 <= par and n <= 2 * par else min(n, par)

    def _evaluate_seeds(self, code_path: Path, seeds: list[int], run_dir: Callable[[int], Path],
                        baseline: dict[str, Any] | None, on_line: Callable[[str], None],
                        trusted: bool) -> dict[int, Any]:
        """Evaluate ``code_path`` on each of ``seeds`` (``run_dir(seed)`` each), up to
        :meth:`seed_parallelism` at once; returns ``{seed: ExecResult}``. The runs are independent
        fixed-work evaluations (one thread each), so running them side by side changes their wall
        time only, never their metrics."""
        def one(sd: int) -> Any:
            self.poll()
            return with_trust(self.executor.evaluate, code_path, run_dir(sd), sd, baseline,
                              on_line=on_line, trusted=trusted)

        width = self._seed_width(len(seeds))
        if width <= 1:
            return {sd: one(sd) for sd in seeds}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="asiarch-seed") as pool:
            futures = {sd: pool.submit(one, sd) for sd in seeds}
            return {sd: fut.result() for sd, fut in futures.items()}

    # ------------------------------------------------------------------ judging and scoring a record
    def _judge_record(self, record: Any, parent: Any, baseline: dict[str, Any] | None,
                      recorder: CallRecorder | None, st: Any = None) -> dict[str, Any] | None:
        """The judge's verdict on ``record`` (candidates and the seed alike); None (s_judge
        unmeasured, 0.5) when the judge fails twice, with the failure in ``record.extra``."""
        nearest = None
        try:
            with self._novelty_lock:
                near = [n for n in self.lab.novelty.nearest(record.motivation, 2) if n[0] != record.id]
            nearest = near[0] if near else None
        except Exception:
            nearest = None
        history = [r for r in self._history() if r.id != record.id]
        try:
            if isinstance(self.judge_agent, LLMJudge):
                return self.judge_agent.judge(record, parent, baseline, nearest, param_budget(self.scale),
                                              recorder, baselines=self.baselines(), history=history)
            if isinstance(self.judge_agent, BuiltinJudge) and recorder is not None:
                recorder.step("judge", "builtin", "builtin")
            return self.judge_agent.judge(record, parent, baseline, nearest, param_budget(self.scale),
                                          recorder, history=history)
        except Exception as exc:  # malformed twice: s_judge stays unmeasured (0.5, marked)
            if st is not None:
                st.fail(str(exc))
            record.extra["judge_failure"] = str(exc)
            return None

    def _score(self, record: Any, verdict: dict[str, Any] | None, ys: Yardstick | None,
               status: str = "accepted") -> dict[str, Any]:
        """Score ``record`` against the yardstick (agents.yardstick.score): the fitness is the
        mean of its per-seed fitness values, with ``fitness_interval`` and ``fitness_seeds``;
        None (with ``components["unscored"]``) without a yardstick or complete metrics."""
        fitness, comps = score(record.metrics, verdict, ys, status, None if ys is not None else self.yardstick_missing())
        record.fitness = fitness
        record.fitness_components = comps
        record.fitness_interval = comps.get("fitness_interval")
        record.fitness_seeds = dict(comps.get("fitness_seeds") or {})
        record.yardstick = ys.version if ys is not None else ""
        return comps

    def _decide_promotion(self, record: Any) -> None:
        """The promotion rule against the current ``best`` (run in the committing thread, so
        concurrent experiments are compared with the best that is current at their commit)."""
        from agents.stats import promote

        if record.status != "accepted" or record.fitness is None:
            record.promotion = {"promoted": False, "outcome": "unmeasured", "rule": "", "text": "not measured",
                                "incumbent": None}
            return
        inc = self.lab.store.best()
        inc_seeds = None
        if inc is not None:
            book = getattr(self.lab, "scores", None)
            rescored = book.get(inc.id) if book is not None else None
            fs = inc.fitness_seeds
            fit = inc.fitness
            if rescored is not None:  # the incumbent as re-scored against the current yardstick
                fs = (rescored.get("fitness_components") or {}).get("fitness_seeds") or {}
                fit = rescored.get("fitness")
            inc_seeds = ({int(k): v for k, v in fs.items()} if fs
                         else ({int(inc.seed): fit} if fit is not None else None))
        verdict = promote({int(k): v for k, v in record.fitness_seeds.items()}, inc_seeds)
        record.promotion = {**verdict.to_dict(), "incumbent": inc.id if inc is not None else None}

    def _reproduce_info(self, record: Any) -> dict[str, Any]:
        """``record.reproduce`` (agents.repro.environment) for an evaluated record."""
        from agents.repro import environment
        from agents.seeds import per_seed

        limits = getattr(self.executor, "limits", None)
        seeds = [int(e["seed"]) for e in per_seed(record.metrics) if isinstance(e.get("seed"), int)]
        try:
            return environment(self.scale, seeds or [self.seed], self.seed, self.lab.config,
                               threads=getattr(limits, "threads", None))
        except Exception as exc:  # never lose the experiment over its environment record
            return {"error": f"{type(exc).__name__}: {exc}"}
