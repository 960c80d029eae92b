"""One experiment, top to bottom: sample → research → novelty → check → (approve) → evaluate →
seeds → analyse → judge → score → commit (docs/ARCHITECTURE.md, "One experiment, step by step").

:meth:`ExperimentMixin._run_experiment` reads as the list of stages; each stage is one method
below it, in order, sharing one :class:`ExperimentRun` (the experiment's id, run folder, record,
proposal and the Engineer's outcome). A stage that ends the experiment early (research failed,
not novel, rejected, check failed) returns the committed record; the others return None.
Checking, approval and evaluation are the Engineer's (``agents.engineer``); baselines, seeds and
scoring against the yardstick are in ``agents.baselines``; the crash journal in
``agents.journal``. ``agents.loop.Loop`` mixes this in and schedules the experiments.
"""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agents.analyst import BuiltinAnalyst
from agents.engineer import Decision
from agents.events import ExperimentFinished, ExperimentStarted, LogLine, MetricPoint, StageChanged, Warning
from agents.journal import clear_state
from agents.llm import CallRecorder, LLMError
from agents.records import param_budget, scale_name, summary, utc, versions
from agents.seeds import combine as combine_seeds
from agents.researcher import Proposal, Rejection, ResearchContext, ResearchError

__all__ = ["STAGES", "ExperimentRun", "ExperimentMixin"]

STAGES = ("sample", "research", "novelty", "check", "debug", "approval", "evaluate", "seeds", "analyse",
          "judge", "score", "commit")

_METRIC_RE = re.compile(r"^\[(?P<label>[\w\-]+)\]\s+step\s+(?P<step>\d+).*?loss\s+(?P<loss>[-+0-9.eE]+|nan|inf)")


@dataclass
class ExperimentRun:
    """What the stages of one experiment share."""

    exp_id: str
    run_dir: Path
    #: the crash journal's state (``runs/<id>/state.json``): given when the experiment is redone
    saved: dict[str, Any] | None
    timings: dict[str, float] = field(default_factory=dict)
    t_exp: float = field(default_factory=time.perf_counter)
    parent: Any = None
    references: list[Any] = field(default_factory=list)
    recorder: CallRecorder | None = None
    #: the ``archive.record.ExperimentRecord`` being filled, committed by :meth:`ExperimentMixin._finish`
    record: Any = None
    proposal: Proposal | None = None
    #: what the evaluation is measured against (``Loop.evaluation_baseline``)
    baseline: dict[str, Any] | None = None
    #: the Engineer's outcome (``agents.engineer.DevelopOutcome``)
    out: Any = None
    on_line: Callable[[str, str], None] | None = None


class ExperimentMixin:
    """The experiment pipeline of a ``Loop`` (uses its lab, agents, locks, ``poll`` and ``emit``)."""

    def _run_experiment(self, exp_id: str, saved: dict[str, Any] | None, fork: str | None) -> Any:
        """Run experiment ``exp_id`` (``saved``: redo it from its journal; ``fork``: its parent)
        through every stage and return its committed record."""
        run = ExperimentRun(exp_id, self._runs() / exp_id, saved)
        with self._research_lock:  # sampling, research, novelty: one experiment at a time
            self._sample(run, fork)
            self._new_record(run)
            self.poll()
            done = self._research(run)
            if done is not None:
                return done
            self._proposals[exp_id] = run.proposal
        self.poll()
        done = self._develop(run)  # check, approval, evaluate
        if done is None:
            done = self._seeds(run)
        if done is not None:
            return done
        self._analyse(run)
        return self._judge_and_score(run)

    def _stage(self, run: ExperimentRun, name: str) -> "_Stage":
        """A stage of ``run``: its StageChanged events and wall time (``with self._stage(...)``)."""
        return _Stage(self, run.exp_id, name, run.timings)

    # -- 1. sample
    def _sample(self, run: ExperimentRun, fork: str | None) -> None:
        """The parent and references: sampled from the candidates (or ``fork``), or the saved
        ones of an experiment redone; a new experiment's journal is written."""
        store, exp_id, saved = self.lab.store, run.exp_id, run.saved
        if saved is not None:
            with self._stage(run, "sample"):
                parent = store.get(saved["parent"])
                references = [store.get(r) for r in saved.get("references", []) if r in store]
            self.emit(ExperimentStarted(exp_id=exp_id, parent=parent.id, references=[r.id for r in references],
                                        scale=scale_name(self.scale), mode=self.mode, redo=True))
        else:
            if run.run_dir.exists():
                shutil.rmtree(run.run_dir, ignore_errors=True)
            with self._stage(run, "sample"):
                if fork is not None:
                    parent = store.get(fork)
                else:
                    parent = self._measured(self.lab.candidates.sample_parent(self.rng))
                references = [self._measured(r) for r in
                              self.lab.candidates.sample_references(self.rng, exclude={parent.id})]
                references = [r for r in references if r.id != parent.id]
            self.emit(ExperimentStarted(exp_id=exp_id, parent=parent.id, references=[r.id for r in references],
                                        scale=scale_name(self.scale), mode=self.mode))
            run.saved = {"id": exp_id, "parent": parent.id, "references": [r.id for r in references],
                         "stage": "research", "started": utc()}
            self._save_state(run.run_dir, run.saved)
        run.parent, run.references = parent, references

    def _new_record(self, run: ExperimentRun) -> None:
        """The record the stages fill, with its transcript recorder."""
        from archive.record import ExperimentRecord

        run.recorder = recorder = CallRecorder(exp_id=run.exp_id, emit=self.emit)
        run.record = record = ExperimentRecord(
            id=run.exp_id, name="unnamed", parent=run.parent.id, references=[r.id for r in run.references],
            scale=scale_name(self.scale), seed=self.seed, transcript=recorder.transcript, timings=run.timings)
        record.extra["agent_steps"] = recorder.steps  # who answered each agent step
        record.versions = versions()

    # -- 2/3. research and novelty
    def _research(self, run: ExperimentRun) -> Any | None:
        """A novel proposal into ``run.proposal`` and the record (the saved one when redone);
        the committed record when research failed or nothing novel came."""
        record, saved = run.record, run.saved
        if saved.get("proposal"):
            proposal, researcher_spec, failure = self._restore_proposal(run)
        else:
            proposal, researcher_spec, failure = self._propose_novel(run)
        record.extra.setdefault("novelty_rejections", saved.get("novelty_rejections", []))
        if saved.get("cognition"):
            record.cognition = list(saved["cognition"])
        record.researcher = researcher_spec
        if proposal is not None:
            record.name = proposal.name
            record.slug = ""
            record.__post_init__()
            record.motivation = proposal.motivation
            record.code = proposal.code
            self._apply_fields(record, proposal)
        if proposal is None or failure:
            status = "rejected" if failure.startswith("not novel") else "failed"
            if proposal is None:
                record.name = "research-failed"
                record.slug = ""
                record.__post_init__()
            return self._finish(record, status, failure, run.run_dir, run.t_exp)
        run.proposal = proposal
        return None

    def _restore_proposal(self, run: ExperimentRun) -> tuple[Proposal, str, str]:
        """The proposal saved before a crash, and the transcript of the calls that made it."""
        saved = run.saved
        proposal = Proposal.from_dict(saved["proposal"])
        researcher_spec = saved.get("researcher", getattr(self.researcher, "spec", "none"))
        run.recorder.transcript.extend(saved.get("transcript") or [])  # the calls before the crash
        run.record.extra["redone_after_crash"] = True
        self.emit(LogLine(exp_id=run.exp_id, source="loop", line="redoing the saved proposal"))
        return proposal, researcher_spec, ""

    def _propose_novel(self, run: ExperimentRun) -> tuple[Proposal | None, str, str]:
        """Research rounds until a proposal is novel (or ``novelty_rounds`` rejections); returns
        the proposal (None: research failed), the researcher's spec and the failure ("" if none).
        The proposal is journalled so a crash after it redoes it."""
        exp_id, record, parent = run.exp_id, run.record, run.parent
        proposal: Proposal | None = None
        researcher_spec = getattr(self.researcher, "spec", "none")
        failure = ""
        cog_hits = self._cognition_for(parent)
        ctx = ResearchContext(
            exp_id=exp_id, parent=parent, references=run.references, cognition=cog_hits,
            failures=self._recent_failures(), history=self._history(), baselines=self.baselines(),
            scale=scale_name(self.scale), param_budget=param_budget(self.scale),
            rng=random.Random(f"{self.seed}-{exp_id}"), recorder=run.recorder, lab=self.lab)
        rounds = 0
        while True:
            with self._stage(run, "research") as st:
                try:
                    proposal, researcher_spec = self._propose(ctx)
                except (LLMError, ResearchError) as exc:
                    failure = f"research failed: {exc}"
                    st.fail(str(exc))
                    proposal = None
                except Exception as exc:  # a researcher's bug fails the step, not the loop
                    failure = f"research failed: {type(exc).__name__}: {exc}"
                    record.extra["traceback"] = traceback.format_exc()[-4000:]
                    st.fail(f"{type(exc).__name__}: {exc}")
                    proposal = None
            if proposal is None:
                break
            self.poll()
            with self._stage(run, "novelty") as st:
                novel, near = self._novelty(proposal)
                if not novel and near is not None:
                    st.fail(f"too close to {near[0]} (similarity {near[1]:.2f})")
            if novel or near is None:
                break
            nrec = self._neighbour(near[0])
            ctx.rejections.append(Rejection(proposal, "not novel", near[0], nrec.name, nrec.motivation,
                                            float(near[1])))
            rounds += 1
            if rounds > self.novelty_rounds:
                failure = (f"not novel after {rounds} proposals: the last was too close to experiment "
                           f"{near[0]} ({near[1]:.2f})")
                break
            self.poll()
        record.extra["novelty_rejections"] = [
            {"name": r.proposal.name, "motivation": r.proposal.motivation, "neighbour": r.neighbour_id,
             "similarity": r.similarity} for r in ctx.rejections]
        record.cognition = [str(e.id) for e, _ in cog_hits]
        if proposal is not None and not failure:
            run.saved.update({"proposal": dataclasses.asdict(proposal), "researcher": researcher_spec,
                              "stage": "check", "novelty_rejections": record.extra["novelty_rejections"],
                              "cognition": record.cognition, "transcript": list(run.recorder.transcript)})
            self._save_state(run.run_dir, run.saved)
        return proposal, researcher_spec, failure

    # -- 4-6. check, approval, evaluate (the Engineer and its Debugger)
    def _develop(self, run: ExperimentRun) -> Any | None:
        """The Engineer checks the code (debugging it), asks for approval in supervised mode and
        evaluates it on the first seed (and the side seeds); its outcome into ``run.out`` and
        the record. The committed record when rejected or the check failed."""
        exp_id, proposal, record, timings = run.exp_id, run.proposal, run.record, run.timings
        run.baseline = baseline = self.evaluation_baseline()

        def approval(code: str, checks: list[dict[str, Any]]) -> Decision:
            self.poll()  # a mode switch may have just arrived
            if self.mode != "supervised":
                return Decision("approve")
            return self._await_approval(exp_id, proposal.name, proposal.motivation, code, checks)

        def on_stage(name: str, status: str, detail: str) -> None:
            self.emit(StageChanged(exp_id=exp_id, stage=name, status=status, detail=detail[:500]))
            if status in ("finished", "failed"):
                self.poll()

        run.on_line = on_line = self._line_sink(exp_id)
        t0 = time.perf_counter()
        side = self._side_seeds()
        out = self.engineer.develop(proposal.code, run.run_dir, motivation=proposal.motivation, seed=self.seed,
                                    baseline=baseline, recorder=run.recorder, approval=approval,
                                    on_stage=on_stage, on_line=on_line, trusted=proposal.trusted,
                                    side_seeds=side, early_stop=self.early_stop)
        run.out = out
        eng_time = time.perf_counter() - t0
        for k, v in out.timings.items():
            timings[k] = round(timings.get(k, 0.0) + v, 4)
        timings["engineer_overhead"] = round(max(0.0, eng_time - sum(out.timings.values())), 4)
        record.code = out.code
        record.checks = out.checks
        record.metrics = out.metrics or {}
        record.train_log = out.log_tail[-4000:]
        record.extra["debug_rounds"] = out.rounds
        record.extra["edited_by_user"] = out.edited
        if out.status == "rejected":
            return self._finish(record, "rejected", out.error, run.run_dir, run.t_exp)
        if out.status == "check_failed":
            return self._finish(record, "failed", f"check failed: {out.error}", run.run_dir, run.t_exp)
        self.poll()
        return None

    def _line_sink(self, exp_id: str) -> Callable[[str, str], None]:
        """``on_line(source, line)`` for the evaluations: a LogLine, and a MetricPoint for a
        training step's loss."""
        def on_line(source: str, line: str) -> None:
            self.emit(LogLine(exp_id=exp_id, source=source, line=line))
            m = _METRIC_RE.match(line)
            if m:
                try:
                    self.emit(MetricPoint(exp_id=exp_id, name=f"{m['label']}_loss", step=int(m["step"]),
                                          value=float(m["loss"])))
                except ValueError:
                    pass

        return on_line

    # -- 6b. seeds: successive halving, a rung-0 result that would enter the top earns more seeds
    def _seeds(self, run: ExperimentRun) -> Any | None:
        """More seeds for a promising rung 0 (:meth:`_more_seeds`); the committed record when a
        further seed's trained model is found non-causal."""
        record, proposal, out = run.record, run.proposal, run.out
        if not record.metrics:
            return None
        with self._stage(run, "seeds") as st:
            self._more_seeds(record, run.run_dir, run.baseline, run.on_line, st,
                             trusted=proposal.trusted and out.code == proposal.code, ready=out.side_seeds)
        self.poll()
        # a further seed's trained model found non-causal by the harness rejects the design
        bad = next((e for e in record.metrics.get("seeds") or [] if e.get("status") == "rejected"), None)
        if bad is not None:
            why = str(bad.get("stop_reason") or bad.get("error") or "non-causal (found after training)")
            return self._finish(record, "rejected", f"seed {bad.get('seed')}: {why}", run.run_dir, run.t_exp)
        return None

    def _side_seeds(self) -> tuple[int, ...]:
        """The seeds to evaluate beside rung 0: all the others while the lab's top holds fewer
        than ``top_k_seeds`` designs measured on several seeds (then any finite rung-0 result
        earns them, see ``agents.stats.needs_more_seeds``) and they all fit the cores at once
        (:meth:`_seed_width`); else none (successive halving decides after rung 0)."""
        others = tuple(sd for sd in self._seed_list() if sd != self.seed)
        if not others or self._seed_width(1 + len(others)) < 1 + len(others):
            return ()
        top = [d for d in self.lab.index.all() if d.get("status") == "accepted" and int(d.get("n_seeds") or 0) >= 2]
        return others if len(top) < self.top_k_seeds else ()

    def _more_seeds(self, record: Any, run_dir: Path, baseline: dict[str, Any] | None,
                    on_line: Callable[[str, str], None], st: "_Stage", trusted: bool = False,
                    ready: dict[int, Any] | None = None) -> None:
        """Successive halving (agents.stats): ``record.metrics`` (rung 0, one seed) become the
        multi-seed metrics when the rung-0 result would enter the top ``top_k_seeds`` designs
        measured on several seeds, else the one-seed form (``seeds`` with one entry).
        ``ready``: {seed: result} already evaluated beside rung 0 (:meth:`_side_seeds`)."""
        from agents.seeds import screen, screen_of
        from agents.stats import needs_more_seeds

        rung0 = dict(record.metrics)
        rung0.setdefault("seed", self.seed)
        seeds = [sd for sd in self._seed_list() if sd != rung0.get("seed")]
        runs = [rung0]
        value = screen(rung0, baseline)
        top = [screen_of(d.get("fitness_components")) for d in self.lab.index.all()
               if d.get("status") == "accepted" and int(d.get("n_seeds") or 0) >= 2]
        if seeds and rung0.get("status") == "ok" and needs_more_seeds(value, top, self.top_k_seeds):
            ready = {sd: r for sd, r in (ready or {}).items() if sd in seeds}
            todo = [sd for sd in seeds if sd not in ready]
            how = (f"evaluating seeds {', '.join(map(str, todo))} ({self._seed_width(len(todo))} at once)" if todo
                   else f"seeds {', '.join(map(str, seeds))} were evaluated beside it")
            self.emit(LogLine(exp_id=record.id, source="loop",
                              line=f"rung 0 would enter the top {self.top_k_seeds}: {how}"))
            results = dict(ready)
            if todo:
                results.update(self._evaluate_seeds(run_dir / "mixer.py", todo, lambda sd: run_dir / f"eval_seed{sd}",
                                                    baseline, lambda l: on_line("train", l), trusted))
            for sd in seeds:
                res = results[sd]
                m = res.metrics or {"status": "error", "error": res.error, "seed": sd}
                m.setdefault("seed", sd)
                runs.append(m)
        elif seeds and rung0.get("status") == "stopped_early":
            st.fail("stopped early at the half-way checkpoint: stays at one seed")
        elif seeds:
            st.fail(f"rung 0 stays at one seed (measured terms {value if value is None else round(value, 4)} "
                    f"below the top {self.top_k_seeds})")
        record.metrics = combine_seeds(runs)
        record.extra["rung"] = 0 if len(runs) == 1 else 1

    # -- 7. analyse
    def _analyse(self, run: ExperimentRun) -> None:
        """The analyst's analysis, problem and ablations into the record (the rule-based
        analyst's when the configured one fails)."""
        store, record, parent, recorder = self.lab.store, run.record, run.parent, run.recorder
        siblings = [store.get(c) for c in store.children(parent.id)]
        with self._stage(run, "analyse") as st:
            try:
                if isinstance(self.analyst, BuiltinAnalyst):
                    recorder.step("analyst", "builtin", "builtin")
                analysis = self.analyst.analyse(record, parent, siblings, self.baselines(), recorder)
            except Exception as exc:  # malformed twice (LLMError) or an analyst bug: rule-based
                st.fail(str(exc))
                analysis = BuiltinAnalyst().analyse(record, parent, siblings, self.baselines(), recorder)
                record.extra["analyst_failure"] = str(exc)
        record.analysis = analysis.text()
        record.problem = analysis.problem
        record.extra["ablations"] = analysis.ablations
        self.poll()

    # -- 8-10. judge, score, commit
    def _judge_and_score(self, run: ExperimentRun) -> Any:
        """The judge's verdict, the fitness against the yardstick (``agents.baselines``), then
        the commit; returns the committed record."""
        exp_id, record, out = run.exp_id, run.record, run.out
        with self._stage(run, "judge") as st:
            verdict = self._judge_record(record, run.parent, run.baseline, run.recorder, st)
        status = {"ok": "accepted", "too_slow": "too_slow", "stopped_early": "stopped_early"}.get(out.status, "failed")
        with self._stage(run, "score"):
            ys = self.yardstick()
            comps = self._score(record, verdict, ys, status)
            if comps.get("leak_suspected"):
                self.emit(Warning(exp_id=exp_id, source="score", message=(
                    f"{exp_id}: validation loss more than {float(comps.get('leak_fraction') or 0.1):.0%} below the "
                    "seed baseline's: suspected leak of future tokens, not counted as a win")))
            if ys is None and status == "accepted":
                self.emit(Warning(exp_id=exp_id, source="score", message=(
                    f"{exp_id}: not scored: {comps.get('unscored')}")))
        reason = ""
        if status == "too_slow":
            tp = (record.metrics or {}).get("throughput_vs_seed")
            reason = f"too slow: {out.error}" + (f" (throughput {tp:.2f}x the seed's)" if isinstance(tp, (int, float)) else "")
        elif status == "stopped_early":
            reason = out.error if out.error.startswith("stopped early") else f"stopped early: {out.error}"
        elif status == "failed":
            reason = f"evaluation failed: {out.error}"
        return self._finish(record, status, reason, run.run_dir, run.t_exp)

    def _finish(self, record: Any, status: str, reason: str, run_dir: Path, t_exp: float) -> Any:
        record.status = status
        if record.metrics and not record.reproduce:
            record.reproduce = self._reproduce_info(record)
        if reason:
            record.extra["failure"] = reason
        if not record.analysis and reason:
            record.analysis = f"## Outcome\n{status}: {reason}\n"
        t0 = time.perf_counter()
        self.emit(StageChanged(exp_id=record.id, stage="commit", status="started"))
        record.timings["total"] = round(time.perf_counter() - t_exp, 4)
        sha = self._commit(record)
        self.emit(StageChanged(exp_id=record.id, stage="commit", status="finished",
                               duration_s=time.perf_counter() - t0))
        clear_state(run_dir)
        self.emit(ExperimentFinished(exp_id=record.id, name=record.name, status=status, fitness=record.fitness,
                                     fitness_components=record.fitness_components,
                                     metrics=summary(record.metrics), sha=sha,
                                     duration_s=time.perf_counter() - t_exp, reason=reason,
                                     promotion=str((record.promotion or {}).get("outcome") or "")))
        return record


class _Stage:
    """Context manager: StageChanged events and the stage's wall time into ``timings``."""

    def __init__(self, loop: Any, exp_id: str, name: str, timings: dict[str, float]) -> None:
        self.loop, self.exp_id, self.name, self.timings = loop, exp_id, name, timings
        self.failed: str | None = None

    def fail(self, detail: str) -> None:
        self.failed = detail

    def __enter__(self) -> "_Stage":
        self.t0 = time.perf_counter()
        self.loop.emit(StageChanged(exp_id=self.exp_id, stage=self.name, status="started"))
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        dt = time.perf_counter() - self.t0
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + dt, 4)
        status = "failed" if (et is not None or self.failed) else "finished"
        detail = self.failed or ("" if ev is None else f"{type(ev).__name__}: {ev}")
        self.loop.emit(StageChanged(exp_id=self.exp_id, stage=self.name, status=status, detail=detail[:500],
                                    duration_s=dt))
