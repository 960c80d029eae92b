"""How one research loop runs: the lab's ``[loop]`` and ``[executor]`` config with a command's
overrides applied, resolved once into a ``LoopSettings`` that ``agents.loop.Loop`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.scales import Scale

__all__ = ["LoopSettings"]


@dataclass(frozen=True)
class LoopSettings:
    """The resolved settings of one loop (build them with :meth:`from_config`).

    ``mode``, ``experiments`` and ``hours`` are where the loop starts: its commands (``set_mode``,
    ``set_budget``) change the ``Loop``'s own copies, never these.
    """

    #: ``autonomous`` or ``supervised``.
    mode: str
    #: a scale name or a ``training.scales.Scale``.
    scale: str | Scale
    #: the budget: experiments, hours (0: no limit).
    experiments: int
    hours: float
    #: the seed of sampling and of every evaluation.
    seed: int
    #: the Debugger's repair rounds per experiment.
    debug_rounds: int
    #: proposals sent back as not novel before the step is rejected.
    novelty_rounds: int
    #: seeds per design entering the top, and the size of that top (``agents.stats``).
    seeds: int
    top_k_seeds: int
    #: stop a candidate's first-seed LM run at its half-way checkpoint when its loss is this many
    #: of the seed's seed-to-seed spreads above the seed's; None: never.
    early_stop: float | None
    #: experiments in flight at once, each in its own worker thread.
    concurrency: int
    #: overrides every role's backend: ``builtin``, ``ollama:MODEL[@HOST]`` or
    #: ``openai:MODEL@URL`` (None: the lab's ``[llm]`` config).
    llm: str | None = None
    #: names of ``training.mixers.REFERENCE_MIXERS`` to measure as yardsticks (None: all of them;
    #: the seed's is always measured).
    baselines: tuple[str, ...] | None = None
    #: LLM transport retries, first backoff and request timeout (seconds).
    retries: int = 2
    backoff_s: float = 2.0
    timeout_s: float = 300.0
    #: how long ``run()`` waits for the lab lock (seconds).
    lock_timeout: float = 30.0

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        llm: str | None = None,
        mode: str | None = None,
        scale: str | Scale | None = None,
        experiments: int | None = None,
        hours: float | None = None,
        seed: int | None = None,
        debug_rounds: int | None = None,
        novelty_rounds: int | None = None,
        concurrency: int | None = None,
        baselines: tuple[str, ...] | None = None,
        retries: int = 2,
        backoff_s: float = 2.0,
        timeout_s: float = 300.0,
        lock_timeout: float = 30.0,
    ) -> LoopSettings:
        """The settings from the lab's config (``archive.config.LabConfig``), each override that
        is not None replacing its config value. Raises ``ValueError`` for an unknown mode."""
        loop = config.loop
        mode = mode or loop.mode
        if mode not in ("autonomous", "supervised"):
            raise ValueError(f"mode {mode!r} is not autonomous or supervised")
        ex_cfg = getattr(config, "executor", None)
        return cls(
            mode=mode,
            scale=scale if scale is not None else loop.scale,
            experiments=loop.experiments if experiments is None else experiments,
            hours=loop.hours if hours is None else hours,
            seed=loop.seed if seed is None else seed,
            debug_rounds=int(getattr(loop, "debug_rounds", 3)) if debug_rounds is None else debug_rounds,
            novelty_rounds=loop.novelty_rounds if novelty_rounds is None else novelty_rounds,
            seeds=max(1, int(getattr(loop, "seeds", 1) or 1)),
            top_k_seeds=max(1, int(getattr(loop, "top_k_seeds", 5) or 5)),
            early_stop=(float(getattr(loop, "early_stop_spreads", 1.0))
                        if getattr(loop, "early_stop", True) else None),
            concurrency=max(1, int(concurrency if concurrency is not None
                                   else getattr(ex_cfg, "concurrency", 1) or 1)),
            llm=llm, baselines=baselines, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s,
            lock_timeout=lock_timeout,
        )
