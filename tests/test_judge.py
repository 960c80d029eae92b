"""The built-in judge: terms independent of the loss/score terms, the seed judged too."""

from __future__ import annotations

from pathlib import Path

from agents.builtin.genome import SEED_GENOME
from agents.judge import BuiltinJudge, code_trace, genome_distance, trace_distance
from archive.record import ExperimentRecord

DELTANET = (Path(__file__).resolve().parent.parent / "training" / "mixers" / "deltanet.py").read_text()
BASE = {"status": "ok", "mixer_params": 16000, "cpu_seconds": 50.0, "probe_mean": 0.6, "val_loss": 2.0}


def _rec(exp_id: str, genome=None, code: str = DELTANET, **metrics) -> ExperimentRecord:
    return ExperimentRecord(id=exp_id, name=f"d{exp_id}", code=code, genome=genome,
                            metrics={**BASE, **metrics}, motivation="")


def test_distances():
    a = SEED_GENOME.to_dict()
    assert genome_distance(a, a) == 0.0
    assert genome_distance(a, SEED_GENOME.with_(output_gate="swish").to_dict()) == 1 / len(a)
    t = code_trace(DELTANET)
    assert t and trace_distance(t, t) == 0.0 and code_trace("def (:") == frozenset()
    assert trace_distance(frozenset({"a"}), frozenset({"b"})) == 1.0


def test_the_seed_is_judged_and_a_tweak_of_it_scores_less_innovation():
    j = BuiltinJudge()
    seed = _rec("0000", SEED_GENOME.to_dict())
    v_seed = j.judge(seed, None, BASE, history=[])
    assert v_seed["judge"] == "builtin" and v_seed["complexity"] == 5.5 and v_seed["performance"] == 5.5
    assert "ref:" in v_seed["reason"]  # measured against the other reference mixers
    tweak = _rec("0002", SEED_GENOME.with_(output_gate="swish").to_dict())
    v_tweak = j.judge(tweak, None, BASE, history=[seed])
    assert v_tweak["innovation"] < v_seed["innovation"]


def test_judge_ignores_loss_probe_level_and_wording():
    j = BuiltinJudge()
    seed = _rec("0000", SEED_GENOME.to_dict())
    g = SEED_GENOME.with_(expand_v=2.0).to_dict()
    lo = _rec("0003", g, probe_mean=0.1, val_loss=3.0)
    hi = _rec("0003", g, probe_mean=0.9, val_loss=1.5)
    hi.motivation = "A radically novel, unprecedented breakthrough architecture."
    a, b = j.judge(lo, None, BASE, history=[seed]), j.judge(hi, None, BASE, history=[seed])
    assert (a["performance"], a["innovation"], a["complexity"]) == (b["performance"], b["innovation"], b["complexity"])


def test_complexity_from_parameters_and_speed_relative_to_the_seed():
    j = BuiltinJudge()
    seed = _rec("0000", SEED_GENOME.to_dict())
    small_fast = _rec("0004", SEED_GENOME.with_(expand_k=0.5).to_dict(), mixer_params=8000, cpu_seconds=25.0)
    big_slow = _rec("0005", SEED_GENOME.with_(expand_k=2.0).to_dict(), mixer_params=32000, cpu_seconds=100.0)
    c1 = j.judge(small_fast, None, BASE, history=[seed])["complexity"]
    c2 = j.judge(big_slow, None, BASE, history=[seed])["complexity"]
    # half/double the parameters: +-2.25; half/double the CPU seconds: +-2.25 x (1 - log2 1.25)
    assert c1 == 9.3 and c2 == 1.7
    # without CPU seconds on both sides, tokens/s is the speed: twice the seed's counts
    # log2(2) - log2(1.25) = 0.68 (the timing-noise band is taken out)
    lm = _rec("0006", SEED_GENOME.with_(expand_k=2.0).to_dict(), tokens_per_s=2000.0)
    no_cpu = {k: v for k, v in BASE.items() if k != "cpu_seconds"}
    assert j.judge(lm, None, {**no_cpu, "tokens_per_s": 1000.0}, history=[seed])["complexity"] == 7.0


def test_speed_within_timing_noise_counts_as_equal():
    """A loaded machine makes the same work take 10-15% more CPU seconds; that must not move the
    complexity score (a loaded machine may make things slower, never different)."""
    j = BuiltinJudge()
    seed = _rec("0000", SEED_GENOME.to_dict())
    g = SEED_GENOME.with_(conv_size=2).to_dict()
    base_cpu = float(BASE["cpu_seconds"])
    scores = {j.judge(_rec("0010", g, cpu_seconds=base_cpu * f), None, BASE, history=[seed])["complexity"]
              for f in (0.85, 1.0, 1.12, 1.2)}
    assert len(scores) == 1
    slower = j.judge(_rec("0011", g, cpu_seconds=base_cpu * 2.0), None, BASE, history=[seed])["complexity"]
    assert slower < scores.pop()


def test_performance_is_run_health_and_spread():
    j = BuiltinJudge()
    seed = _rec("0000", SEED_GENOME.to_dict())
    g = SEED_GENOME.with_(conv_size=2).to_dict()
    assert j.judge(_rec("0007", g, status="stopped"), None, BASE, history=[seed])["performance"] == 2.0
    base = {**BASE, "spread": {"probe_mean": {"n": 3, "std": 0.04}}}
    steady = _rec("0008", g, spread={"probe_mean": {"n": 3, "std": 0.01}})
    shaky = _rec("0009", g, spread={"probe_mean": {"n": 3, "std": 0.16}})
    assert j.judge(steady, None, base, history=[seed])["performance"] > 5.5
    assert j.judge(shaky, None, base, history=[seed])["performance"] < 5.5


def test_llm_judge_scores_held_to_the_schema_range_without_hand_checks():
    """A score outside 1-10 is caught by the schema (no check of the judge's own): one correction
    round naming the field, then the model's integer scores are used as they are; twice out of
    range and the rubric answers the step."""
    import json

    from agents.judge import LLMJudge
    from agents.llm import CallRecorder, OpenAIBackend
    from tests.fake_llm_server import FakeLLMServer, ScriptedResponder

    good = {"performance": 7, "innovation": 3, "complexity": 9, "reason": "clean"}
    resp = ScriptedResponder().add("judge", {**good, "performance": 11}, good,
                                   {**good, "innovation": 0}, {**good, "complexity": 7.5})
    seed = _rec("0000", SEED_GENOME.to_dict())
    rec = _rec("0002", SEED_GENOME.with_(output_gate="swish").to_dict())
    with FakeLLMServer(resp) as srv:
        judge = LLMJudge(OpenAIBackend("scripted", srv.url, timeout_s=5), backoff_s=0)
        cr = CallRecorder()
        v = judge.judge(rec, seed, BASE, None, recorder=cr, history=[seed])
        assert (v["performance"], v["innovation"], v["complexity"]) == (7, 3, 9) and v["judge"] == judge.spec
        correction = srv.chat_requests()[1]["messages"][-1]["content"]
        assert "performance must be an integer from 1 to 10 (got 11)" in correction
        assert json.dumps(list(range(1, 11)), separators=(",", ":")) in correction  # the schema's enum
        cr2 = CallRecorder()
        v2 = judge.judge(rec, seed, BASE, None, recorder=cr2, history=[seed])
    assert v2["judge"] == "builtin"  # the rubric answered this step
    assert [s["by"] for s in cr2.steps] == ["fallback"]
    errors = [t["error"] for t in cr2.transcript if t["model"] != "builtin"]
    assert errors == ["innovation must be an integer from 1 to 10 (got 0)",
                      "complexity must be an integer from 1 to 10 (got 7.5)"]
