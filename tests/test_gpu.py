"""GPU-only checks (skipped with a reason on a machine without CUDA, as this one): fla's Triton
kernels, which the ops dispatch to for CUDA tensors, against our chunked ops on the same inputs,
and a short verify run of the seed on the GPU (LM training, then the lm-eval tasks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training import ops

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device here: the fla kernels and the verify scale need a GPU")
needs_fla = pytest.mark.skipif(not (CUDA and ops.fla_available()),
                               reason="no CUDA device, or fla (flash-linear-attention) / triton not importable")


def _inputs(B: int = 2, H: int = 4, L: int = 256, D: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g)
    k = F.normalize(torch.randn(B, H, L, D, generator=g), dim=-1)
    v = torch.randn(B, H, L, D, generator=g)
    beta = torch.rand(B, H, L, generator=g) * 0.9 + 0.05
    log_decay = -torch.rand(B, H, L, generator=g) * 0.5
    log_decay_k = -torch.rand(B, H, L, D, generator=g) * 0.1
    return {"q": q, "k": k, "v": v, "beta": beta, "g": log_decay, "gk": log_decay_k}


CASES = {
    "linear_attention": lambda t: ops.linear_attention(t["q"], t["k"], t["v"]),
    "retention": lambda t: ops.retention(t["q"], t["k"], t["v"], 1 - 2.0 ** (-5 - torch.arange(4.0))),
    "simple_gla": lambda t: ops.simple_gla(t["q"], t["k"], t["v"], t["g"]),
    "gated_linear_attention": lambda t: ops.gated_linear_attention(t["q"], t["k"], t["v"], t["gk"]),
    "delta_rule": lambda t: ops.delta_rule(t["q"], t["k"], t["v"], t["beta"]),
    "gated_delta_rule": lambda t: ops.gated_delta_rule(t["q"], t["k"], t["v"], t["beta"], t["g"]),
}


@needs_fla
@pytest.mark.parametrize("op", sorted(CASES))
def test_fla_kernels_match_our_chunked_ops(op):
    """Same inputs: our chunked op in float32 on the CPU, fla's kernel on the GPU (forward and the
    gradient of q)."""
    cpu = {k: v.clone().requires_grad_(k == "q") for k, v in _inputs().items()}
    gpu = {k: v.cuda().requires_grad_(k == "q") for k, v in _inputs().items()}
    ours, theirs = CASES[op](cpu), CASES[op](gpu)
    assert theirs.is_cuda and theirs.shape == ours.shape
    scale = ours.abs().max().item()
    err = (theirs.float().cpu() - ours).abs().max().item()
    assert err <= 1e-2 * max(1.0, scale), f"{op}: fla differs from the chunked op by {err:.3g} (scale {scale:.3g})"
    w = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1))
    (ours * w).sum().backward()
    (theirs * w.cuda()).sum().backward()
    gerr = (gpu["q"].grad.cpu() - cpu["q"].grad).abs().max().item()
    gscale = cpu["q"].grad.abs().max().item()
    assert gerr <= 2e-2 * max(1.0, gscale), f"{op}: dq differs by {gerr:.3g} (scale {gscale:.3g})"


@needs_cuda
@pytest.mark.slow
def test_short_verify_run_of_the_seed_on_the_gpu():
    from training.evaluate import evaluate_class
    from training.mixers import SEED_MIXER, reference_mixer_class
    from training.scales import scaled_down

    scale = scaled_down("verify", 0.02, lm_eval_limit=50, val_batches=4)
    m = evaluate_class(reference_mixer_class(SEED_MIXER), scale, seed=0)
    assert m["status"] == "ok" and not m["partial"], m.get("error") or m.get("stop_reason")
    assert m["benchmark_kind"] == "lm_eval" and set(m["lm_eval"]["tasks"]) == set(scale.lm_eval_tasks)
    assert math.isfinite(m["val_bpb"]) and m["val_bpb"] < 8.0
    assert math.isclose(m["benchmark"], sum(v["score"] for v in m["lm_eval"]["tasks"].values())
                        / len(scale.lm_eval_tasks))


@needs_cuda
@pytest.mark.slow
def test_the_gpu_is_reachable_inside_the_sandbox(tmp_path):
    """An evaluation at a CUDA scale, run the way the loop runs it (the OS sandbox with the
    GPU device nodes bound in, resident memory bounded), trains on the GPU."""
    from training.mixers import REFERENCE_MIXERS, SEED_MIXER
    from training.sandbox import Limits, run_sandboxed

    limits = Limits.for_evaluation("verify")
    assert limits.gpu, "a host with CUDA and GPU device nodes gets the GPU sandbox"
    res = run_sandboxed("evaluate", {"path": str(REFERENCE_MIXERS[SEED_MIXER]), "scale": "verify",
                                     "scale_factor": 0.02, "seed": 0}, tmp_path / "run", limits=limits)
    assert res.ok, res.reason
    assert res.result["metrics"]["device"] == "cuda"
