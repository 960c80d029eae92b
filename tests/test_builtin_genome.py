"""The built-in researcher's design space: genomes, operators, rendering, bandit and proposals."""

from __future__ import annotations

import ast
import random

import pytest
import torch

from agents.builtin.genome import REFERENCE_GENOMES, SEED_GENOME, Genome, GenomeError
from agents.builtin.operators import OPERATORS, crossover
from agents.builtin.render import estimate_params, render
from agents.builtin.search import (
    CognitionHit,
    HistoryItem,
    OperatorBandit,
    genome_key,
    propose,
)


def random_genomes(n: int, seed: int = 0) -> list[Genome]:
    """Random walks through the design space from the seed (valid genomes only)."""
    rng = random.Random(seed)
    out, g = [], SEED_GENOME
    while len(out) < n:
        op = rng.choice(list(OPERATORS.values()))
        res = op.apply(g, rng)
        if res is not None:
            g = res[0]
            out.append(g)
    return out


def test_invalid_genomes_are_refused():
    with pytest.raises(GenomeError, match="feature_map"):
        Genome(feature_map="cosine").validate()
    with pytest.raises(GenomeError, match="needs a decay"):
        Genome(update="gated_delta").validate()
    with pytest.raises(GenomeError, match="L2"):
        Genome(qk_norm="none").validate()
    with pytest.raises(GenomeError, match="unknown genes"):
        Genome.from_dict({**SEED_GENOME.to_dict(), "wings": 2})


def test_genome_round_trip_and_diff():
    for g in random_genomes(30):
        assert Genome.from_dict(g.to_dict()) == g
    g = SEED_GENOME.with_(output_gate="swish").validate()
    assert SEED_GENOME.diff(g) == {"output_gate": ("none", "swish")}


def test_operators_change_the_genome_and_stay_valid():
    rng = random.Random(1)
    applied = {name: 0 for name in OPERATORS}
    for g in [SEED_GENOME, *REFERENCE_GENOMES.values(), *random_genomes(40, seed=2)]:
        for name, op in OPERATORS.items():
            res = op.apply(g, rng)
            if res is None:
                continue
            child, what = res
            assert child != g and what
            child.validate()
            applied[name] += 1
    assert all(n > 0 for n in applied.values()), applied


def test_crossover_mixes_gene_groups():
    rng = random.Random(3)
    a, b = SEED_GENOME, REFERENCE_GENOMES["gla"]
    seen = set()
    for _ in range(30):
        res = crossover(a, b, rng)
        if res:
            child = res[0]
            assert child not in (a, b)
            for k, v in child.to_dict().items():
                assert v in (a.to_dict()[k], b.to_dict()[k])
            seen.add(genome_key(child))
    assert len(seen) > 3


def test_rendered_files_parse_and_use_only_allowed_imports():
    allowed = {"math", "torch", "torch.nn", "torch.nn.functional", "training"}
    for g in [SEED_GENOME, *REFERENCE_GENOMES.values(), *random_genomes(25, seed=4)]:
        src = render(g, name="T")
        tree = ast.parse(src)
        mods = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                mods.add(node.module)
        assert mods <= allowed, mods
        assert any(isinstance(n, ast.ClassDef) and n.name == "Mixer" for n in tree.body)


def _load(src: str):
    ns: dict = {}
    exec(compile(src, "<rendered>", "exec"), ns)  # our own renderer's output, trusted
    return ns["Mixer"]


@pytest.mark.parametrize("idx", range(12))
def test_rendered_mixers_run_causally_with_exact_param_estimate(idx):
    pytest.importorskip("training.ops")
    genomes = [SEED_GENOME, *REFERENCE_GENOMES.values(), *random_genomes(7, seed=5)]
    g = genomes[idx % len(genomes)]
    torch.manual_seed(0)
    mixer = _load(render(g, name="T"))(d_model=32, n_heads=2)
    assert sum(p.numel() for p in mixer.parameters()) == estimate_params(g, 32, 2)
    x = torch.randn(2, 40, 32, requires_grad=True)
    y = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    t = 23
    x2 = x.detach().clone()
    x2[:, t:] = torch.randn_like(x2[:, t:])
    with torch.no_grad():
        y1, y2 = mixer(x.detach()), mixer(x2)
    assert torch.allclose(y1[:, :t], y2[:, :t], atol=1e-5)
    assert not torch.allclose(y1[:, t:], y2[:, t:])


def test_bandit_learns_from_history():
    good = HistoryItem(genome=None, operators=["output_gate"], fitness=0.70, parent_fitness=0.50, failed=False)
    bad = HistoryItem(genome=None, operators=["feature_map"], fitness=None, parent_fitness=0.50, failed=True)
    bandit = OperatorBandit.from_history([good] * 4 + [bad] * 4)
    table = {name: mean for name, _, mean in bandit.table()}
    assert table["output_gate"] > table["short_conv"] > table["feature_map"]
    rng = random.Random(0)
    wins = sum(max((d := bandit.draw(rng)), key=d.get) == "output_gate" for _ in range(200))
    assert wins > 120


def test_proposals_are_new_cite_cognition_and_reproducible():
    hit = CognitionHit("arXiv:2412.06464", "Gated Delta Networks", ["decay", "data_dependent_gate"], 0.9,
                       "gating lets the state forget")
    tried: set[str] = set()
    props = []
    for i in range(15):
        p = propose(SEED_GENOME, "DeltaNet", 0.5, [REFERENCE_GENOMES["gla"]], [], [hit], random.Random(i), tried)
        assert genome_key(p.genome) not in tried and p.genome != SEED_GENOME
        tried.add(genome_key(p.genome))
        assert p.name in p.code and p.operators
        props.append(p)
    cited = [p for p in props if p.cited]
    assert cited and all("arXiv:2412.06464" in p.motivation for p in cited)
    again = propose(SEED_GENOME, "DeltaNet", 0.5, [REFERENCE_GENOMES["gla"]], [], [hit], random.Random(0), set())
    assert again.genome == props[0].genome and again.code == props[0].code


@pytest.mark.parametrize("which", ["seed", "gated_deltanet"])
def test_rendered_mixers_pass_every_check_in_the_sandbox(tmp_path, which):
    """The renderer's files meet the checker: allow-list (``from training import ops``), budget,
    causality, sub-quadratic cost, determinism, all inside the real sandbox."""
    from training.checker import check_file

    g = SEED_GENOME if which == "seed" else REFERENCE_GENOMES["gated_deltanet"]
    path = tmp_path / "mixer.py"
    path.write_text(render(g, name="T"))
    report = check_file(path, "probe", run_dir=tmp_path / "run")
    failed = [(c.name, c.reason) for c in report.checks if not c.passed]
    assert report.passed, failed


def test_proposals_respect_the_parameter_budget():
    """A child that would exceed the scale's mixer budget is never proposed (counted exactly from
    the genome), so no experiment is spent on a design the checker must refuse."""
    from agents.builtin.researcher import budget_check
    from training.scales import get_scale

    s = get_scale("explore")
    big = REFERENCE_GENOMES["gated_deltanet"].with_(expand_v=2.0, output_gate="swish").validate()
    assert estimate_params(big, s.d_model, s.n_heads) > s.mixer_param_budget  # the failure seen in a real run
    fits = budget_check("explore", s.mixer_param_budget)
    assert fits is not None and not fits(big) and fits(SEED_GENOME)
    tried: set[str] = set()
    for i in range(40):
        p = propose(big.with_(expand_v=1.0).validate(), "P", 0.5, [big], [], [], random.Random(i), tried, fits=fits)
        tried.add(genome_key(p.genome))
        assert estimate_params(p.genome, s.d_model, s.n_heads) <= s.mixer_param_budget
