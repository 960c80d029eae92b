"""The built-in researcher inside the real loop (archive, novelty, bandit), with a fast executor."""

from __future__ import annotations

from agents.builtin.genome import Genome
from agents.loop import Loop
from tests.loop_helpers import FakeExecutor, make_lab


def test_builtin_researcher_runs_the_loop_with_distinct_genomes(tmp_path):
    lab = make_lab(tmp_path / "lab")
    ex = FakeExecutor()
    loop = Loop(lab, llm="builtin", executor=ex, experiments=6, backoff_s=0, baselines=("deltanet",))
    summary = loop.run()
    assert summary.state == "finished"
    recs = [lab.store.get(e["id"]) for e in summary.experiments]
    assert len(recs) == 6 and all(r.status == "accepted" for r in recs)
    assert all(r.researcher == "builtin" for r in recs)
    genomes = [Genome.from_dict(r.genome) for r in recs]
    assert len({tuple(sorted(g.to_dict().items())) for g in genomes}) == 6  # never a rehash
    for r in recs:
        assert r.operators and r.name in r.code
        # genome-carrying proposals are judged by their design, not their templated wording
        assert r.extra["novelty_rejections"] == []
        # record.cognition is what the design drew on (cited in its motivation), a subset of
        # what was retrieved for the parent's problem
        assert set(r.cognition) <= set(r.extra["retrieved"])
        assert all(c in r.motivation for c in r.cognition)
    assert any(r.cognition for r in recs)
    # the bandit's history is in the archive: every experiment knows its operators and parent
    assert all(lab.store.get(r.parent) is not None for r in recs)


def test_the_measured_seed_maps_to_the_seed_genome(tmp_path):
    from agents.builtin.genome import SEED_GENOME
    from agents.builtin.researcher import record_genome

    lab = make_lab(tmp_path / "lab")
    Loop(lab, llm="builtin", executor=FakeExecutor(), experiments=1, backoff_s=0, baselines=("deltanet",)).run()
    measured = lab.store.get("0001")
    assert measured.extra["measures"] == "0000"
    assert record_genome(measured) == SEED_GENOME and record_genome(lab.store.get("0000")) == SEED_GENOME
    child = lab.store.get("0002")
    assert child.parent == "0001" and "approached through" not in child.motivation


def test_researcher_module_does_not_import_the_builtin_one():
    """No import cycle: agents.researcher (the interface) never imports agents.builtin; a broken
    built-in researcher fails loudly where it is used instead of turning into "no researcher"."""
    import subprocess
    import sys

    code = ("import sys, agents.researcher, agents.llm, agents.prompts; "
            "print(sorted(m for m in sys.modules if m.startswith('agents.builtin')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    from agents.builtin.researcher import BuiltinResearcher, builtin_researcher

    assert isinstance(builtin_researcher(seed=3), BuiltinResearcher)
