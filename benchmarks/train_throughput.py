"""Training throughput and model-FLOPs utilisation (MFU): megaphi against torchtitan, Megatron-core and transformers.

Every implementation runs whole optimizer steps (forward, backward, clipping, AdamW update). The
in-process implementations run on random tokens already on the device, and the device is
synchronised only around the timed window, so the numbers include whatever host synchronisations
the implementation itself makes (DeepSpeed's fp16 overflow check among them). Model FLOPs per token
come from the trainer's own accounting (``megaphi.train.engine.model_flops_per_token``: 6 N + 12 L H s,
no causal discount), N being each implementation's own parameter count, and MFU divides by the
trainer's peak table, so these numbers read like the trainer's TFLOP/s and MFU columns.

Implementations (``--impl``, several allowed; each then runs in a fresh process):
  megaphi-trainer  ``python -m megaphi.train`` itself: its loop, its loader over a real .bin/.idx
                   (random tokens of the model's vocabulary, written with megaphi's writer), its
                   logged tokens/s; timed from the trainer's own metrics after the warm-up steps
  megaphi          megaphi's PhiForCausalLM in the DeepSpeed engine the trainer builds
                   (megaphi.train.engine: generated ZeRO config + ds_configs template, AdamW from
                   megaphi.train.optimizer, TP mpu, dynamic loss scaling, clipping at 1.0)
  megaphi-compile  the same with train.compile (--compile, default blocks)
  hf-deepspeed     transformers' PhiForCausalLM (same shape and dropout) in that same DeepSpeed engine
  hf-eager         transformers' PhiForCausalLM with plain PyTorch mixed precision: fp32 weights,
                   autocast, fused AdamW, GradScaler for fp16, clipping at 1.0
  hf-compile       hf-eager with torch.compile(model)
  torchtitan       torchtitan's Llama 3 model (PyPI torchtitan) at phi-1's size (layers, hidden,
                   heads, vocab; SwiGLU hidden 5504 for the same MLP FLOPs), FSDP2 (fully_shard per
                   block and root, bf16 parameters, fp32 reductions), each block compiled, flex
                   attention, fused AdamW; bf16 (FSDP2 has no fp16 loss scaler)
  megatron         megatron-core's GPTModel with its local layer spec (no Transformer Engine), phi-1's
                   shape (LayerNorm, GELU, biases, partial rotary 0.5), Float16Module, its DDP with
                   the distributed optimizer, fp16 with dynamic loss scaling, clipping at 1.0

    python benchmarks/train_throughput.py --impl megaphi-trainer --preset phi-1 --micro-batch 16,12,8
    python benchmarks/train_throughput.py --smoke --impl megaphi-trainer megaphi hf-eager  # the CPU check
    python benchmarks/train_throughput.py --summarize results.jsonl           # a markdown table

``--micro-batch`` takes one size or a list tried largest first: the first that runs without running
out of memory is measured (``micro_batch`` in the row, ``tried`` the ones that did not fit), which
is how each implementation's largest fitting micro batch is found. One JSON line per implementation
goes to stdout (an ``error`` field instead of numbers when it failed). Weights of the in-process
implementations are drawn directly on the device (benchmark start-up only).

Each implementation's setup is in benchmarks/train_implementations.py, the megaphi-trainer's run in
benchmarks/trainer_loop.py; this script measures, prints and summarises.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from train_implementations import Settings, build, model_config, parse_deepspeed_set
from trainer_loop import measure_trainer_loop

IMPLS = (
    "megaphi-trainer",
    "megaphi",
    "megaphi-compile",
    "hf-deepspeed",
    "hf-eager",
    "hf-compile",
    "torchtitan",
    "megatron",
)
SMOKE_DEFAULTS: dict[str, Any] = dict(
    preset="phi-tiny", seq_len=128, micro_batch="2", steps=3, warmup=1, precision="fp32"
)
GPU_DEFAULTS: dict[str, Any] = dict(preset="phi-1", seq_len=2048, micro_batch="8", steps=20, warmup=5, precision="fp16")

# ----------------------------------------------------------------------------- measuring


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(s: Settings) -> dict[str, Any]:
    import torch

    from megaphi.train.engine import model_flops_per_token, peak_tflops

    if s.impl == "megaphi-trainer":
        return measure_trainer_loop(s)
    start = time.perf_counter()
    bench = build(s)
    setup_s = time.perf_counter() - start
    first = time.perf_counter()
    for i in range(s.warmup):
        bench.step(i)
    synchronize(s.device)
    warmup_s = time.perf_counter() - first
    skipped_before = bench.skipped_steps()
    start = time.perf_counter()
    for i in range(s.warmup, s.warmup + s.steps):
        bench.step(i)
    synchronize(s.device)
    elapsed = time.perf_counter() - start
    skipped_after = bench.skipped_steps()

    config = model_config(s)
    flops_per_token = model_flops_per_token(config, bench.num_params, s.seq_len)
    tokens_per_s = s.steps * s.tokens_per_step / elapsed
    tflops = tokens_per_s * flops_per_token / 1e12
    on_cuda = s.device.startswith("cuda")
    peak = peak_tflops(None) if on_cuda else None
    result: dict[str, Any] = dict(
        asdict(s),
        device_name=torch.cuda.get_device_name() if on_cuda else "cpu",
        torch=torch.__version__,
        params=bench.num_params,
        flops_per_token=flops_per_token,
        tokens_per_step=s.tokens_per_step,
        setup_s=round(setup_s, 2),
        warmup_s=round(warmup_s, 2),
        step_s=round(elapsed / s.steps, 4),
        tokens_per_s=round(tokens_per_s, 1),
        model_tflops=round(tflops, 3),
        peak_tflops=peak,
        mfu=round(tflops / peak, 4) if peak else None,
        loss=bench.last_loss(),
        skipped_steps=None if skipped_after is None or skipped_before is None else skipped_after - skipped_before,
    )
    if on_cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    else:
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


# ----------------------------------------------------------------------------- reporting


def summarize(path: Path) -> str:
    """A markdown table of the JSON lines in ``path`` (other lines, such as logs, are skipped)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    out = [
        "| impl | precision | micro x accum | tokens/s | model TFLOP/s | MFU | step s | peak mem GiB | "
        "skipped | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(
                f"| {r.get('label', r['impl'])} | {r.get('precision', '')} | {r.get('micro_batch', '')} x "
                f"{r.get('grad_accum', '')} | - | - | - | - | - | - | {r['error'][:90]} |"
            )
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        memory = r.get("peak_memory_gib", r.get("peak_rss_gib")) or "-"
        notes = [r["device_name"], f"setup {r['setup_s']:.0f} s, warm-up {r['warmup_s']:.0f} s"]
        if r["impl"].startswith("megaphi"):
            notes.append(f"compile {r.get('compile', 'none')}, ZeRO-{r.get('zero_stage', 2)}")
        if r.get("trainer_logged_mfu") is not None:
            notes.append(f"trainer logged MFU {100 * r['trainer_logged_mfu']:.1f}%")
        if r.get("tried"):
            notes.append(f"micro {', '.join(map(str, r['tried']))} out of memory")
        out.append(
            f"| {r.get('label', r['impl'])} | {r['precision']} | {r['micro_batch']} x {r['grad_accum']} | "
            f"{r['tokens_per_s']:,.0f} | {r['model_tflops']:.3g} | {mfu} | {r['step_s']:.3f} | {memory} | "
            f"{'-' if r['skipped_steps'] is None else r['skipped_steps']} | {'; '.join(notes)} |"
        )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Training throughput and MFU of megaphi, torchtitan, Megatron-core and "
        "transformers at phi-1's size (one JSON line per implementation)."
    )
    p.add_argument(
        "--impl",
        nargs="+",
        choices=IMPLS,
        default=["megaphi"],
        metavar="IMPL",
        help=f"one or more of {', '.join(IMPLS)} (default megaphi); several run one after another, each in a "
        "fresh process",
    )
    p.add_argument("--preset", help="megaphi model preset (default phi-1; phi-tiny with --smoke)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048; 128 with --smoke)")
    p.add_argument(
        "--micro-batch",
        help="sequences per forward pass, or a list such as 16,12,8 tried largest "
        "first until one fits in memory (default 8; 2 with --smoke)",
    )
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default 20; 3 with --smoke)")
    p.add_argument("--warmup", type=int, help="untimed optimizer steps first (default 5; 1 with --smoke)")
    p.add_argument(
        "--precision", choices=("fp16", "bf16", "fp32"), help="default fp16 (the paper's), fp32 with --smoke"
    )
    p.add_argument(
        "--hf-attn",
        choices=("sdpa", "eager"),
        default="sdpa",
        help="transformers' attn_implementation for the hf-* impls (default sdpa, its default)",
    )
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each layer in backward")
    p.add_argument(
        "--deepspeed-set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="edit the recipe's DeepSpeed template for the DeepSpeed impls, e.g. "
        "zero_optimization.overlap_comm=false (repeatable)",
    )
    p.add_argument(
        "--compile",
        choices=("none", "blocks", "model"),
        help="train.compile for the megaphi impls (default none; blocks for megaphi-compile)",
    )
    p.add_argument("--zero-stage", type=int, choices=(1, 2), default=2, help="DeepSpeed ZeRO stage (default 2)")
    p.add_argument(
        "--cross-entropy",
        choices=("auto", "fused", "liger", "unfused"),
        default="auto",
        help="the megaphi model's loss implementation (default auto)",
    )
    p.add_argument("--smoke", action="store_true", help="check the script on the CPU with a tiny model")
    p.add_argument("--summarize", type=Path, metavar="JSONL", help="print a markdown table of earlier results")
    return p


def micro_batches(value: str) -> list[int]:
    """``"16,12,8"`` -> [16, 12, 8]: the sizes to try, in order."""
    try:
        sizes = [int(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--micro-batch {value!r} must be a size or a comma-separated list of sizes") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--micro-batch {value!r}: every size must be at least 1")
    return sizes


def settings_from_args(args: argparse.Namespace, impl: str) -> Settings:
    import torch

    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    sizes = micro_batches(values["micro_batch"])
    if len(sizes) > 1:
        raise ValueError("one process measures one micro batch; several are tried by the parent process")
    values["micro_batch"] = sizes[0]
    for name in ("seq_len", "steps", "grad_accum"):
        value = values.get(name, getattr(args, name))
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if values["warmup"] < 0:
        raise ValueError(f"--warmup must be at least 0, got {values['warmup']}")
    if args.smoke:
        device = "cpu"
        if values["precision"] == "fp16":
            raise ValueError("--smoke runs on the CPU: use --precision fp32 or bf16")
    else:
        if not torch.cuda.is_available():
            raise ValueError("no CUDA device here; pass --smoke to check the script on the CPU with phi-tiny")
        device = "cuda"
    for item in args.deepspeed_set:
        parse_deepspeed_set(item)
    compile_mode = args.compile or ("blocks" if impl == "megaphi-compile" else "none")
    return Settings(
        impl=impl,
        grad_accum=args.grad_accum,
        device=device,
        hf_attn=args.hf_attn,
        activation_checkpointing=args.activation_checkpointing,
        deepspeed_set=args.deepspeed_set,
        compile=compile_mode,
        zero_stage=args.zero_stage,
        cross_entropy=args.cross_entropy,
        **values,
    )


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its values (a value is any following argument not starting with --)."""
    rest, skip = [], False
    for arg in argv:
        if arg == option:
            skip = True
            continue
        if skip and not arg.startswith("--"):
            continue
        skip = False
        rest.append(arg)
    return rest


def is_out_of_memory(row: dict[str, Any]) -> bool:
    error = row.get("error", "")
    return "OutOfMemoryError" in error or "out of memory" in error


def run_each_in_subprocess(argv: list[str], impls: list[str], sizes: list[int]) -> int:
    """Every impl in fresh processes (clean device memory and compiler caches), each micro batch in ``sizes``
    in turn until one fits; forward the measured JSON line with the sizes that did not fit as ``tried``."""
    rest = _without_option(_without_option(argv, "--impl"), "--micro-batch")
    status = 0
    for impl in impls:
        tried: list[int] = []
        for size in sizes:
            proc = subprocess.run(
                [sys.executable, __file__, *rest, "--impl", impl, "--micro-batch", str(size)],
                stdout=subprocess.PIPE,
                text=True,
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            row = (
                json.loads(lines[-1])
                if lines
                else {"impl": impl, "micro_batch": size, "error": f"exited with status {proc.returncode}"}
            )
            if is_out_of_memory(row) and size != sizes[-1]:
                tried.append(size)
                continue
            if tried:
                row["tried"] = tried  # larger micro batches that ran out of memory
            print(json.dumps(row), flush=True)
            status = status or proc.returncode
            break
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.summarize is not None:
        if not args.summarize.is_file():
            print(f"train_throughput: error: --summarize: no such file {str(args.summarize)!r}", file=sys.stderr)
            return 2
        print(summarize(args.summarize))
        return 0
    try:
        sizes = micro_batches(args.micro_batch or (SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS)["micro_batch"])
    except ValueError as e:
        print(f"train_throughput: error: {e}", file=sys.stderr)
        return 2
    if len(args.impl) > 1 or len(sizes) > 1:
        return run_each_in_subprocess(argv, args.impl, sizes)
    if args.smoke:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported
        # One thread: on a shared CPU, more threads than free cores make every op wait (10-40x slower here).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    impl = args.impl[0]
    try:
        settings = settings_from_args(args, impl)
        model_config(settings)
    except ValueError as e:
        print(f"train_throughput: error: {e}", file=sys.stderr)
        return 2
    from megaphi.config import ConfigError

    try:
        result = measure(settings)
    except Exception as e:  # an OOM or a missing package: one line in the table, not a lost run
        print(
            json.dumps({**asdict(settings), "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}), flush=True
        )
        if isinstance(e, ConfigError):  # a bad --deepspeed-set, say: the message says what to change
            print(f"train_throughput: error: {e}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
