"""A proposal's typed fields: how they reach the record and survive the crash journal."""

from __future__ import annotations

import dataclasses

from agents.proposals import ProposalsMixin
from agents.researcher import Proposal
from archive.record import ExperimentRecord


def _record() -> ExperimentRecord:
    rec = ExperimentRecord(id="0001", name="x", parent="0000")
    rec.cognition = ["a", "b"]  # what was retrieved for the step
    return rec


def test_fields_reach_the_record() -> None:
    p = Proposal("n", "m", "code", genome={"update": "delta"}, operators=["swap_gate"],
                 cognition=["b", "b", "c"], notes={"changes": ["gate"]})
    rec = _record()
    ProposalsMixin()._apply_fields(rec, p)
    assert rec.genome == {"update": "delta"} and rec.operators == ["swap_gate"]
    assert rec.cognition == ["b", "c"] and rec.extra["retrieved"] == ["a", "b"]
    assert rec.extra["changes"] == ["gate"]


def test_no_cited_cognition_keeps_what_was_retrieved() -> None:
    rec = _record()
    ProposalsMixin()._apply_fields(rec, Proposal("n", "m", "code", notes={"value": 3}))
    assert rec.genome is None and rec.operators == [] and rec.cognition == ["a", "b"]
    assert "retrieved" not in rec.extra and rec.extra["value"] == 3


def test_journal_round_trip() -> None:
    p = Proposal("n", "m", "code", genome={"update": "delta"}, operators=["x"], cognition=[],
                 notes={"changes": []}, trusted=True)
    assert Proposal.from_dict(dataclasses.asdict(p)) == p


def test_journal_written_before_the_typed_fields() -> None:
    old = {"name": "n", "motivation": "m", "code": "code", "trusted": False,
           "extra": {"genome": {"update": "delta"}, "operators": ["x"], "cognition": ["c"], "changes": ["g"]}}
    assert Proposal.from_dict(old) == Proposal("n", "m", "code", genome={"update": "delta"}, operators=["x"],
                                               cognition=["c"], notes={"changes": ["g"]})
