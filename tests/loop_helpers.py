"""Shared pieces of the loop tests: a lab factory, scripted agent replies, a fake executor."""

from __future__ import annotations

import ast
import hashlib
import time
from pathlib import Path
from typing import Any

from agents.engineer import StepResult
from tests.standin import set_default
from training.evaluate import EVAL_VERSION

DELTANET = (Path(__file__).resolve().parent.parent / "training" / "mixers" / "deltanet.py").read_text()


def make_lab(path: Path, ollama_host: str | None = None, **loop_cfg: Any):
    """A new lab with the hash embedder (or the fake Ollama's /api/embed when ``ollama_host``)."""
    from archive.config import LabConfig
    from archive.embed import HashEmbedder
    from archive.lab import Lab

    cfg = LabConfig()
    cfg.loop.scale = "probe"
    cfg.loop.novelty_threshold = 0.9
    for k, v in loop_cfg.items():
        setattr(cfg.loop, k, v)
    if ollama_host:
        cfg.llm.ollama_host = ollama_host
        cfg.embedding.backend = "ollama"
        cfg.embedding.model = "scripted-embed"
        return Lab.init(path, config=cfg)
    return Lab.init(path, config=cfg, embedder=HashEmbedder())


def proposal(name: str, motivation: str, **defaults: Any) -> dict[str, str]:
    """A researcher reply: the DeltaNet file with some defaults changed."""
    code = DELTANET
    for k, v in defaults.items():
        new = set_default(code, k, v)
        assert new is not None, k
        code = new
    return {"name": name, "motivation": motivation, "code": code}


def broken(code: str) -> str:
    """A file that parses but fails the dynamic check (wrong output shape)."""
    return code.replace("return self.o_proj(rearrange(o, \"b l h d -> b l (h d)\"))",
                        "return self.o_proj(rearrange(o, \"b l h d -> b l (h d)\"))[:, :-1]")


ANALYSIS = {
    "design_evaluation": "A wider key space.", "results": "Probes went up slightly.",
    "expectation_vs_reality": "As expected.", "explanation": "More key capacity.",
    "insights": "Keep wide keys.", "problem": "noisy recall stays low while mqar is learned",
}
JUDGE = {"performance": 6, "innovation": 5, "complexity": 7, "reason": "solid"}


class FakeExecutor:
    """Check = parse + a marker; evaluate = deterministic metrics from the code (never runs it).

    ``fail_check`` marks code containing ``[:, :-1]`` as failing its shape check;
    ``eval_delay_s`` sleeps in evaluate (to give commands time to arrive).
    """

    def __init__(self, eval_delay_s: float = 0.0) -> None:
        self.eval_delay_s = eval_delay_s
        self.checked: list[str] = []
        self.evaluated: list[str] = []
        self.spans: list[tuple[float, float]] = []

    def check(self, path: Path, run_dir: Path, on_line=None, trusted=False) -> StepResult:
        code = Path(path).read_text()
        self.checked.append(code)
        try:
            ast.parse(code)
        except SyntaxError as exc:
            return StepResult(False, [{"name": "parse", "passed": False, "value": None, "reason": str(exc)}],
                              error=f"parse: {exc}")
        if "[:, :-1]" in code:
            return StepResult(False, [{"name": "shape", "passed": False, "value": None,
                                       "reason": "output shape [2, 15, 64] != input [2, 16, 64]"}],
                              error="shape: output shape [2, 15, 64] != input [2, 16, 64]",
                              log_tail="forward ok\nshape mismatch")
        if on_line:
            on_line("check passed")
        return StepResult(True, [{"name": "shape", "passed": True, "value": None, "reason": ""}])

    def evaluate(self, path: Path, run_dir: Path, seed: int, baseline, on_line=None, trusted=False) -> StepResult:
        code = Path(path).read_text()
        self.evaluated.append(code)
        t0 = time.monotonic()
        if self.eval_delay_s:
            time.sleep(self.eval_delay_s)
        self.spans.append((t0, time.monotonic()))
        h = int(hashlib.sha1(code.encode()).hexdigest()[:6], 16) / 0xFFFFFF
        probes = {"mqar": round(0.3 + 0.4 * h, 4), "noisy_recall": round(0.2 + 0.2 * h, 4)}
        if on_line:
            on_line("[mqar] step 5 loss 2.5000")
        metrics = {"scale": "probe", "seed": seed, "eval_version": EVAL_VERSION, "status": "ok", "probes": probes,
                   "probe_mean": sum(probes.values()) / 2, "val_loss": None, "mixer_params": 17000,
                   "loss_curve": [], "stop_reason": None, "error": None}
        return StepResult(True, [], metrics, seconds=0.01)


def tiny_scale():
    """The probe scale cut down to one small recall probe (a full loop cycle in seconds)."""
    from dataclasses import replace

    from training.probes import probe
    from training.scales import get_scale

    return replace(get_scale("probe"), probes=(
        probe("mqar", vocab_size=64, seq_len=32, num_kv_pairs=4, steps=4, batch_size=8, lr=3e-3,
              eval_examples=16),))


class EvalFailingExecutor(FakeExecutor):
    """Evaluation raises a training error for code containing ``EVALFAIL``."""

    def evaluate(self, path, run_dir, seed, baseline, on_line=None, trusted=False):
        code = Path(path).read_text()
        if "EVALFAIL" in code:
            self.evaluated.append(code)
            metrics = {"status": "error", "error": "training failed with RuntimeError: size mismatch (at mixer.py:60)"}
            return StepResult(False, [], metrics, error=metrics["error"], log_tail="step 1 ...\nRuntimeError")
        return super().evaluate(path, run_dir, seed, baseline, on_line)
