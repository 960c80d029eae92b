"""The checker: static allow-list, and each dynamic check stopping the right hostile or broken
candidate with the right reason (tests/hostile/ holds the candidates)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import cli_text

from training.checker import CHECK_NAMES, check_file
from training.sandbox import Limits
from training.static_check import static_check

HOSTILE = Path(__file__).parent / "hostile"
# cheaper timing check for the hostile candidates (the reference mixers use the defaults)
FAST = {"lengths": [256, 512, 1024], "time_budget_s": 1.5}
STOP = {**FAST, "keep_going": False}


def _check(name: str, tmp_path: Path, **kw):
    return check_file(HOSTILE / f"{name}.py", "probe", run_dir=tmp_path / "run",
                      limits=kw.pop("limits", Limits(wall_s=90)), options=kw.pop("options", FAST), **kw)


def _by_name(report):
    return {c.name: c for c in report.checks}


# ------------------------------------------------------------------ static (no child process)

@pytest.mark.parametrize("name, check, needle", [
    ("syntax_error", "contract", "line 6: syntax error"),
    ("bad_contract", "contract", "Mixer must subclass nn.Module"),
    ("escape_import_os", "imports", "line 2: import os"),
    ("escape_socket", "imports", "line 2: import socket"),
    ("escape_open_file", "imports", "line 8: open: `open` is not allowed"),
    ("escape_builtins_getattr", "imports", "__builtins__"),
    ("escape_class_chain", "imports", ".__subclasses__"),
    ("escape_runtime", "imports", ".os"),
])
def test_static_rejections_name_line_and_construct(name, check, needle, tmp_path):
    report = _check(name, tmp_path)
    assert not report.passed
    c = _by_name(report)[check]
    assert not c.passed and needle in c.reason, c.reason
    # no child was started: the dynamic checks did not run, and no run folder was made
    assert all(x.reason.startswith("not run") for x in report.checks[2:])
    assert report.isolation is None and not (tmp_path / "run").exists()
    assert [x.name for x in report.checks] == list(CHECK_NAMES)


@pytest.mark.parametrize("src, needle", [
    ("x = __import__('os')", "__import__"),
    ("eval('1')", "`eval`"),
    ("exec('1')", "`exec`"),
    ("compile('1', 'f', 'exec')", "`compile`"),
    ("g = globals()", "`globals`"),
    ("import torch\ntorch.save({}, 'f')", "'save'"),
    ("import torch\nt = torch._C", "'_C'"),
    ("from torch import os", "from torch import os"),
    ("import training.ops", "binds the whole"),
    ("from training import loader", "only `training.ops`"),
    ("from . import x", "relative imports"),
    ("import numpy", "import numpy"),
    ("x = (1).__class__", ".__class__"),
    ("f = lambda: 0\nf.__globals__", ".__globals__"),
    ("import torch\nm = torch.nn.Module\nd = getattr(m, '__dict__')", "getattr"),
    ("s = '{0.__class__}'", "string constants naming dunders"),
    ("import torch\ntorch.isfinite = abs", "monkeypatching"),
    ("def g():\n    yield 1", "generators"),
    ("T = type('T', (), {})", "type(name, bases, dict)"),
    ("import torch\nx = torch.nn.modules.module.register_module_forward_hook", "process-wide hook"),
])
def test_static_check_refuses(src, needle):
    rep = static_check(src)
    assert not rep.imports_ok
    text = "; ".join(str(v) for v in rep.violations)
    assert needle in text, text
    assert all(v.line >= 1 for v in rep.violations)


def test_static_check_allows_the_contract_idioms():
    src = '''"""Docstrings may mention __init__ and __class__."""
from __future__ import annotations
import math
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from training import ops
from training.ops import delta_rule
from typing import Optional
from dataclasses import dataclass
from functools import partial


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, expand: float = 1.0, **kwargs):
        super().__init__()
        nn.Module.__init__(self)
        self.h = n_heads
        setattr(self, "proj0", nn.Linear(d_model, d_model))
        self._cache = None

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> torch.Tensor:
        act = getattr(F, "silu")
        return act(getattr(self, "proj0")(x)) * math.sqrt(1.0)


if __name__ == "__main__":
    print(Mixer(8, 2))
'''
    rep = static_check(src)
    assert rep.ok, rep.summary()


def test_static_check_contract_details():
    rep = static_check("import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, d_model, n_heads):\n"
                       "        super().__init__()\n")
    text = "; ".join(str(v) for v in rep.contract_errors)
    assert "must accept **kwargs" in text and "missing `forward(self, x)`" in text
    assert not static_check("x = 1").contract_ok
    assert not static_check(b"\xff\xfe").parse_ok
    assert not static_check("x = (" * 500 + ")" * 500).parse_ok


# ------------------------------------------------------------------ dynamic (in the sandbox)

def test_valid_candidate_passes_every_check(tmp_path):
    seen = []
    report = _check("valid_cummean", tmp_path, on_check=seen.append)
    assert report.passed, [(c.name, c.reason) for c in report.checks if not c.passed]
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert [c.name for c in seen] == list(CHECK_NAMES)  # streamed as they finish
    checks = _by_name(report)
    assert checks["build"].value == 2 * (64 * 64 + 64)  # two Linear layers at d_model=64
    assert checks["causality"].value <= 1e-5
    assert checks["subquadratic"].details["time_exponent"] <= 1.35
    assert checks["subquadratic"].details["memory_exponent"] <= 1.35
    # the op trace runs from the smallest scored length to 2048, and agrees with the timings
    sq = checks["subquadratic"].details
    assert sq["trace_lengths"][0] == 32 and sq["trace_lengths"][-1] >= 2048
    assert sq["time_vs_counts"]["compared"] and not sq["time_vs_counts"]["mismatch"]
    assert "asiarch_candidate" not in sys.modules  # the parent never imported the candidate


@pytest.mark.parametrize("name, needle", [
    ("noncausal_global_sum", "not causal"),
    ("noncausal_next_token", "not causal"),
    ("noncausal_reverse_cumsum", "not causal"),
    ("batch_mixing", "samples are not independent"),
    ("noncausal_eval_only", "eval mode"),
])
def test_non_causal_designs_fail_causality(name, needle, tmp_path):
    report = _check(name, tmp_path, options=STOP)
    c = _by_name(report)["causality"]
    assert not report.passed and not c.passed
    assert needle in c.reason and c.value > 1e-5, c.reason
    assert _by_name(report)["forward_backward"].passed
    assert _by_name(report)["subquadratic"].reason.startswith("not run: causality failed")


@pytest.mark.parametrize("name, needle, every", [
    # a zero-initialised gate: inert as initialised, a leak once the parameters move
    ("leak_zero_gate", "params re-drawn", r"params re-drawn"),
    # a leak only at the probes' lengths (<= 64)
    ("leak_short_lengths", "changing tokens", r"L=(32|48|64),"),
    # a leak only when input rows repeat (token embeddings): Gaussian inputs never show it
    ("leak_repeated_rows", "changing tokens", r"^changing tokens"),
    # a leak only with autograd on in eval mode (a validation pass with grad)
    ("leak_grad_only", "eval mode, grad on", r"eval mode, grad on"),
    # a leak only at the held-out evaluation batch size of the probes
    ("leak_eval_batch", "batch 64", r"batch 64,"),
])
def test_scored_configuration_leaks_fail_causality(name, needle, every, tmp_path):
    import re

    report = _check(name, tmp_path, options=STOP)
    c = _by_name(report)["causality"]
    assert not report.passed and not c.passed and c.value > 1e-5
    assert c.reason.startswith("not causal") and needle in c.reason, c.reason
    assert "position" in c.reason and "L=" in c.reason and "mode" in c.reason, c.reason
    failing = c.details["failing"]
    assert failing and all(re.search(every, f) for f in failing), failing


def test_a_failure_names_its_configuration(tmp_path):
    """A design that raises only at an odd length (the checker's unscored L=77) fails causality
    with the length, batch, mode and grad setting of the forward that raised."""
    import re

    report = _check("raises_at_odd_length", tmp_path, options=STOP)
    c = _by_name(report)["causality"]
    assert _by_name(report)["forward_backward"].passed and not c.passed
    assert c.reason.startswith("raised RuntimeError") and "is invalid for input" in c.reason, c.reason
    assert re.search(r"\(at L=(77|259), batch \d+, (train|eval) mode, grad (on|off)\)$", c.reason), c.reason


def test_a_child_killed_mid_check_names_the_call_in_flight(tmp_path, monkeypatch):
    """When the sandbox kills the child (wall time), the running check's reason names the
    configuration of the worker call in flight, from the harness's ``where`` events."""
    from training import sandbox
    from training.sandbox import SandboxResult

    events = [{"event": "start", "name": "build"},
              {"event": "check", "check": {"name": "build", "passed": True, "value": 1, "reason": "", "details": {}}},
              {"event": "start", "name": "forward_backward"},
              {"event": "check", "check": {"name": "forward_backward", "passed": True, "value": 1, "reason": "",
                                           "details": {}}},
              {"event": "start", "name": "causality"}, {"event": "where", "config": "the causality forwards"},
              {"event": "where", "config": "L=77, batch 2, eval mode, grad off"}]

    def fake(task, payload, run_dir, **kw):
        return SandboxResult(False, None, "killed after 90 s wall time", Path(run_dir) / "check.log", events)

    monkeypatch.setattr(sandbox, "run_sandboxed", fake)
    report = check_file(HOSTILE / "valid_cummean.py", "probe", run_dir=tmp_path / "run")
    c = _by_name(report)["causality"]
    assert c.reason == "killed after 90 s wall time (at L=77, batch 2, eval mode, grad off)", c.reason
    assert _by_name(report)["subquadratic"].reason.startswith("not run")


def test_time_is_cross_checked_against_the_counted_cost():
    """The worker's op trace (FLOPs, memory traffic) against the harness's timings over the same
    lengths: a trace reporting linear counts while the timed cost grows quadratically fails; the
    timer's usual noise (a fixed per-call cost, a bent long end) does not."""
    from training.checker import TIME_COUNT_GAP, time_vs_counts

    Ls = [512, 1024, 2048]
    t_lengths = [32, 64, 128, 256, 512, 1024, 2048]
    linear = [{"path": ["mm"], "flops": 1000 * L, "bytes": 400 * L + 70_000} for L in t_lengths]
    quad = [1e-8 * L * L for L in Ls]
    bad = time_vs_counts(Ls, quad, t_lengths, linear)
    assert bad["compared"] and bad["mismatch"] and bad["gap"] > TIME_COUNT_GAP, bad
    assert "does not match the harness's timings over L=512/1024/2048" in bad["reason"]
    assert bad["time_exponent"] > 1.9 and bad["flops_exponent"] < 1.05
    noisy = [0.020 + 1e-5 * L for L in Ls]  # per-call overhead: flatter than the counts
    assert not time_vs_counts(Ls, noisy, t_lengths, linear)["mismatch"]
    bent = [1e-5 * 512, 1e-5 * 1024 * 1.1, 1e-5 * 2048 * 1.5]  # a noisy long end, exponent ~1.4
    ok = time_vs_counts(Ls, bent, t_lengths, linear)
    assert ok["compared"] and not ok["mismatch"] and ok["gap"] < TIME_COUNT_GAP
    # quadratic counts and quadratic time agree (the exponent check judges them)
    qtrace = [{"path": ["mm", "bmm"], "flops": L * L, "bytes": 4 * L * L} for L in t_lengths]
    assert not time_vs_counts(Ls, quad, t_lengths, qtrace)["mismatch"]
    # a trace without memory traffic is no trace; a path change is the path check's
    none = [{"path": ["mm"], "flops": 0, "bytes": 0} for _ in t_lengths]
    assert time_vs_counts(Ls, noisy, t_lengths, none)["mismatch"]
    split = linear[:6] + [{"path": ["bmm"], "flops": 1, "bytes": 1}]
    assert not time_vs_counts(Ls, quad, t_lengths, split)["compared"]
    assert not time_vs_counts(Ls, quad, t_lengths[:5], linear[:5])["compared"]


def test_quadratic_below_the_long_lengths_fails_on_its_code_path(tmp_path):
    report = _check("quadratic_below_threshold", tmp_path)
    checks = _by_name(report)
    assert checks["causality"].passed
    c = checks["subquadratic"]
    assert not c.passed and "the algorithm changes with the length" in c.reason, c.reason
    assert "scaled_dot_product" in c.reason and "FLOP exponent" in c.reason
    paths = c.details["paths"]
    assert len(paths) == 2 and paths[0]["lengths"][0] == 32 and paths[0]["lengths"][-1] == 256
    assert paths[0]["flops_exponent"] > 1.35 and paths[1]["flops_exponent"] <= 1.35


def test_quadratic_design_fails_subquadratic(tmp_path):
    report = _check("quadratic_attention", tmp_path)
    checks = _by_name(report)
    assert checks["causality"].passed  # it is causal; only its cost is wrong
    c = checks["subquadratic"]
    assert not c.passed and c.value > 1.35 and "super-linear" in c.reason
    assert c.details["memory_exponent"] > 1.35  # it keeps L x L scores for backward


@pytest.mark.parametrize("name, check, needle", [
    ("over_budget", "build", "exceed the budget of 32,768"),
    ("wrong_shape", "forward_backward", "output shape (2, 32, 128) != input shape (2, 32, 64)"),
    ("nan_output", "forward_backward", "NaN or infinite"),
    ("tensor_subclass", "forward_backward", "plain torch.Tensor"),
    ("monkeypatch_alias", "build", "modified torch.isfinite"),
    ("monkeypatch_ops_submodule", "build", "modified training.ops.common.chunk_size_for"),
    ("escape_dynamic_getattr", "build", "sandbox: getattr(..., 'os') is not allowed"),
])
def test_broken_candidates_stop_at_the_right_check(name, check, needle, tmp_path):
    report = _check(name, tmp_path, options=STOP)
    assert not report.passed
    first = report.first_failure()
    assert first is not None and first.name == check and needle in first.reason, (first.name, first.reason)


def test_reference_seed_passes_and_softmax_fails_check_6(tmp_path):
    from training.mixers import REFERENCE_MIXERS

    good = check_file(REFERENCE_MIXERS["deltanet"], "probe", run_dir=tmp_path / "d")
    assert good.passed, [(c.name, c.reason) for c in good.checks if not c.passed]
    bad = check_file(REFERENCE_MIXERS["softmax_attention"], "probe", run_dir=tmp_path / "s")
    failed = [c.name for c in bad.checks if not c.passed]
    assert failed == ["subquadratic"], failed
    assert "time exponent" in bad.checks[5].reason and bad.checks[5].value > 1.35


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_attention", "retnet", "gla", "gated_deltanet"])
def test_other_reference_mixers_pass(name, tmp_path):
    from training.mixers import REFERENCE_MIXERS

    report = check_file(REFERENCE_MIXERS[name], "probe", run_dir=tmp_path / "r")
    assert report.passed, [(c.name, c.reason) for c in report.checks if not c.passed]


# ------------------------------------------------------------------ CLI

def _app():
    import typer

    from asiarch_tui import cli_check

    app = typer.Typer()
    cli_check.register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the group
        pass

    return app


def test_cli_check_json_and_exit_codes(tmp_path):
    runner = CliRunner()
    app = _app()
    res = runner.invoke(app, ["check", str(HOSTILE / "escape_import_os.py"), "--json"])
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["passed"] is False and data["checks"][1]["name"] == "imports"
    assert "import os" in data["checks"][1]["reason"]
    res = runner.invoke(app, ["check", str(tmp_path / "missing.py")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["check", str(HOSTILE / "syntax_error.py")])
    assert res.exit_code == 1 and "syntax error" in res.stdout
    res = runner.invoke(app, ["check", str(HOSTILE / "valid_cummean.py"), "--scale", "nope"])
    assert res.exit_code == 2 and "'nope' is not one of 'demo', 'probe'" in cli_text(res)


@pytest.mark.slow
def test_hidden_quadratic_backward_is_measured_not_guessed(tmp_path):
    """Two Python-loop recurrences that look alike: indexing a[:, t] makes backward O(L^2)
    (select's backward allocates a full-size zero tensor per step); unbind() keeps it linear."""
    # cheaper timing and trace lengths: the counted memory traffic decides, not the timer
    opts = {**FAST, "trace_lengths": [128, 256, 512, 1024]}
    good = check_file(HOSTILE / "valid_recurrent_unbind.py", "probe", run_dir=tmp_path / "g", options=opts)
    assert good.passed, [(c.name, c.reason) for c in good.checks if not c.passed]
    bad = check_file(HOSTILE / "quadratic_index_loop.py", "probe", run_dir=tmp_path / "b", options=opts)
    c = _by_name(bad)["subquadratic"]
    assert [x.name for x in bad.checks if not x.passed] == ["subquadratic"]
    # the counted memory traffic finds it whatever the timer says; the saved activations stay linear
    assert c.details["memory_exponent"] <= 1.35
    assert max(p["traffic_exponent"] for p in c.details["paths"]) > 1.8
    assert "memory-traffic exponent" in c.reason or c.details["time_exponent"] > 1.35, c.reason
    good_c = _by_name(good)["subquadratic"]
    assert max(p["traffic_exponent"] for p in good_c.details["paths"]) < 1.2
