"""Synthetic experiment records for benchmarks and tests (clearly fake: researcher ``synthetic``).

:func:`grow` commits ``n`` experiments to a store or lab the way the loop would: parent and
references from the candidate ranks, a mix of statuses, a mutated mixer file.
"""

from __future__ import annotations

import random
from typing import Any

from archive.record import ExperimentRecord

_LEVERS = ["delta rule", "forget gate", "short convolution", "output gate", "elu feature map",
           "multi-scale decay", "sliding window", "head layout", "normalisation", "chunk size"]
_EFFECTS = ["sharper recall", "stabler training", "longer memory", "less interference",
            "cheaper state", "better local modelling"]

BASE_CODE = '''import torch
from torch import nn


class Mixer(nn.Module):
    """Synthetic test mixer: a causal cumulative mean followed by a projection."""

    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
        return self.proj(torch.cumsum(x, dim=1) / steps)
'''


def synthetic_record(rng: random.Random, exp_id: str, parent: ExperimentRecord | None,
                     references: list[str] | None = None) -> ExperimentRecord:
    """One plausible record: mutated parent code, a motivation naming two levers, metrics and
    a fitness for accepted ones."""
    num = int(exp_id) if exp_id else rng.randint(0, 10**6)
    status = rng.choices(["accepted", "failed", "rejected"], weights=[7, 2, 1])[0]
    a, b = rng.sample(_LEVERS, 2)
    motivation = (f"Combine a {a} with a {b} to get {rng.choice(_EFFECTS)}; "
                  f"variant {num} tunes the {a} (setting {rng.randint(1, 64)}).")
    code = (parent.code if parent else BASE_CODE) + f"# {num}: {a} x {b}, k={rng.randint(1, 9)}\n"
    metrics: dict[str, Any] = {}
    fitness = None
    if status == "accepted":
        loss = rng.uniform(1.2, 2.0)
        metrics = {"scale": "probe", "seed": 0, "val_loss": loss, "val_bpb": loss / 0.6931,
                   "probe_mean": rng.random(), "probes": {"mqar": rng.random(), "copy": rng.random()},
                   "status": "ok", "tokens_per_s": rng.uniform(2e4, 4e4)}
        fitness = rng.random()
    return ExperimentRecord(
        id=exp_id, name=f"{a} {b} {num}", parent=parent.id if parent else None,
        references=references or [], status=status, motivation=motivation, code=code,
        analysis=f"The {a} helped; the {b} was neutral." if status == "accepted" else "",
        problem=f"{a} interacts with {b}", metrics=metrics, fitness=fitness,
        fitness_components={"s_loss": rng.random(), "s_score": rng.random(), "s_judge": rng.random(),
                            "measured": {"s_loss": True, "s_score": True, "s_judge": False}} if fitness is not None else {},
        scale="probe", researcher="synthetic", seed=rng.randint(0, 9),
        created=f"2026-01-01T{(num // 3600) % 24:02d}:{(num // 60) % 60:02d}:{num % 60:02d}Z",
        operators=[rng.choice(["mutate", "crossover"])], train_log="step 1 loss 2.0\nstep 2 loss 1.9\n",
    )


def grow(lab: Any, n: int, rng: random.Random, on_commit: Any = None) -> None:
    """Commit ``n`` synthetic experiments to ``lab`` (a Lab), sampling parents and references
    from its candidate set. ``on_commit(sha)`` is called after each."""
    for _ in range(n):
        parent = lab.candidates.sample_parent(rng)
        refs = [r.id for r in lab.candidates.sample_references(rng, exclude={parent.id})]
        rec = synthetic_record(rng, "", parent, refs)
        sha = lab.commit(rec)
        if on_commit:
            on_commit(sha)
