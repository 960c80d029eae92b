"""bf16 autocast vs fp32 on this CPU: matmul speed, and tokens/s and loss of the six reference mixers.

    .venv/bin/python benchmarks/bf16.py [--steps 40] [--seeds 1] [--only a,b] [--threads 1] [--json]

Measures only; the trainer is not changed. First the matmul speed of fp32 and bf16 (1024^3 and a
projection-shaped product), and whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 /
AMX; without them bf16 matmuls are emulated and slow). Then, per reference mixer and seed, two
short training runs at the explore scale's model and batch shape (d_model 128, 4 heads, 2 layers,
16 x 256 bytes; ``--steps`` steps instead of the scale's 300, the same data, initialisation and
AdamW schedule as training/trainer.py): one in fp32, one with the forward under
``torch.autocast("cpu", dtype=torch.bfloat16)``; the weights, gradients, optimizer state and the
loss (logits upcast) stay fp32, and so do the ops' decay sums and delta-rule state carry
(training/ops/). Reported per run: tokens per CPU-second (``time.process_time`` with
``--threads`` threads; on a machine shared with other jobs CPU time is the fairer clock), the
final training loss (mean of the last 10 steps) and the validation loss evaluated in fp32 on the
scale's fixed validation windows. The verdict compares the bf16-fp32 loss change with the spread
over seeds (with one seed there is no spread: run --seeds 3 for the decision).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_flag, json_output  # noqa: E402
from training.backbone import LanguageModel  # noqa: E402
from training.data import batches, load_corpus, validation_batches  # noqa: E402
from training.mixers import REFERENCE_MIXERS, reference_mixer_class  # noqa: E402
from training.scales import get_scale  # noqa: E402
from training.trainer import TrainConfig, lr_at, seed_everything, sequence_loss  # noqa: E402


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def matmul_gflops(dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 5) -> float:
    """GFLOP/s of an ``[m, k] x [k, n]`` product in ``dtype`` (median of CPU times)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        a @ b
        times.append(time.process_time() - t0)
    return 2 * m * k * n / max(statistics.median(times), 1e-9) / 1e9


def train_once(name: str, seed: int, steps: int, bf16: bool) -> dict:
    """One short run of reference mixer ``name``; its speed and losses."""
    scale = get_scale("explore")
    seed_everything(seed)
    model = LanguageModel(reference_mixer_class(name), scale.vocab_size, scale.d_model, scale.n_layers, scale.n_heads)
    corpus = load_corpus()
    gen = torch.Generator().manual_seed(seed)
    data = batches(corpus.train, scale.batch_size, scale.seq_len, gen)
    val = validation_batches(corpus.val, scale.batch_size, scale.seq_len, scale.val_batches)
    cfg = TrainConfig(steps=steps, lr=scale.lr, warmup_steps=max(1, steps // 10), seed=seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    losses, tokens = [], 0
    model.train()
    t0 = time.process_time()
    for step in range(steps):
        x, y = next(data)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast:
            logits = model(x)
        loss = sequence_loss(logits, y)  # upcasts the logits: the loss is fp32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        tokens += x.numel()
    cpu = time.process_time() - t0
    model.eval()
    with torch.no_grad():
        val_loss = statistics.mean(float(sequence_loss(model(x), y)) for x, y in val)
    return {"mixer": name, "seed": seed, "dtype": "bf16" if bf16 else "fp32", "steps": steps,
            "tokens_per_cpu_s": tokens / max(cpu, 1e-9), "cpu_s": cpu,
            "train_loss": statistics.mean(losses[-10:]), "val_loss": val_loss,
            "finite": all(l == l and abs(l) != float("inf") for l in losses)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="training steps per run (the explore scale has 300)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated subset of the reference mixers")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--matmul-only", action="store_true", help="only the matmul speeds")
    add_json_flag(ap)
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(REFERENCE_MIXERS)
    unknown = [n for n in names if n not in REFERENCE_MIXERS]
    if unknown:
        ap.error(f"unknown mixer(s) {', '.join(unknown)}; choose from {', '.join(REFERENCE_MIXERS)}")
    with json_output("bf16", args.json) as rec:
        rec.settings.update(steps=args.steps, seeds=args.seeds, mixers=names, threads=args.threads,
                            shape="explore: d_model 128, 4 heads, 2 layers, batch 16 x 256", clock="process_time")
        run(args, names, rec.figures)


def run(args: argparse.Namespace, names: list[str], figures: dict) -> None:
    """Matmul speeds, then the training pairs; figures go to ``figures``."""
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    native = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    mm = {}
    for label, shape in (("square_1024", (1024, 1024, 1024)), ("projection_4096x128x512", (4096, 128, 512))):
        mm[label] = {dt: round(matmul_gflops(getattr(torch, dt), *shape), 2) for dt in ("float32", "bfloat16")}
    figures.update(native_bf16=native, cpu_bf16_flags=sorted(f for f in flags if "bf16" in f or "amx" in f),
                   matmul_gflops=mm)
    print(f"oneDNN native bf16: {native}; CPU bf16/AMX flags: {', '.join(figures['cpu_bf16_flags']) or 'none'}")
    for label, r in mm.items():
        print(f"matmul {label}: fp32 {r['float32']:.1f} GFLOP/s, bf16 {r['bfloat16']:.1f} GFLOP/s "
              f"({r['bfloat16'] / max(r['float32'], 1e-9):.2f}x)")
    if args.matmul_only:
        return
    runs = []
    print(f"\n{'mixer':<18}{'seed':>5}{'dtype':>6}{'tok/CPU-s':>11}{'train loss':>11}{'val loss':>10}")
    for name in names:
        for seed in range(args.seeds):
            for bf16 in (False, True):
                r = train_once(name, seed, args.steps, bf16)
                runs.append(r)
                print(f"{name:<18}{seed:>5}{r['dtype']:>6}{r['tokens_per_cpu_s']:>11,.0f}{r['train_loss']:>11.4f}"
                      f"{r['val_loss']:>10.4f}{'' if r['finite'] else '  NON-FINITE'}", flush=True)
    summary = {}
    print(f"\n{'mixer':<18}{'speed bf16/fp32':>16}{'val loss fp32':>15}{'bf16 - fp32':>13}{'seed spread':>13}")
    for name in names:
        f32 = [r for r in runs if r["mixer"] == name and r["dtype"] == "fp32"]
        b16 = [r for r in runs if r["mixer"] == name and r["dtype"] == "bf16"]
        speed = statistics.median(b["tokens_per_cpu_s"] / f["tokens_per_cpu_s"] for f, b in zip(f32, b16))
        diff = statistics.mean(b["val_loss"] - f["val_loss"] for f, b in zip(f32, b16))
        spread = statistics.stdev([f["val_loss"] for f in f32]) if len(f32) > 1 else None
        summary[name] = {"speed_ratio": round(speed, 3), "val_loss_fp32": round(statistics.mean(f["val_loss"] for f in f32), 4),
                         "val_loss_change": round(diff, 4), "seed_spread": spread and round(spread, 4)}
        print(f"{name:<18}{speed:>15.2f}x{summary[name]['val_loss_fp32']:>15.4f}{diff:>+13.4f}"
              f"{('-' if spread is None else f'{spread:.4f}'):>13}")
    rank32 = sorted(names, key=lambda n: statistics.mean(r["val_loss"] for r in runs if r["mixer"] == n and r["dtype"] == "fp32"))
    rank16 = sorted(names, key=lambda n: statistics.mean(r["val_loss"] for r in runs if r["mixer"] == n and r["dtype"] == "bf16"))
    print(f"\nranking by val loss, fp32: {' < '.join(rank32)}")
    print(f"ranking by val loss, bf16: {' < '.join(rank16)}")
    figures.update(runs=runs, summary=summary, ranking_fp32=rank32, ranking_bf16=rank16)


if __name__ == "__main__":
    main()
