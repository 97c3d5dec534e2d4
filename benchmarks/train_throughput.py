"""Training throughput and model-FLOPs utilisation (MFU): megaphi against transformers' PhiForCausalLM.

Every implementation runs whole optimizer steps (forward, backward, clipping, AdamW update) on random
tokens of the model's vocabulary. The device is synchronised only around the timed window, so the
numbers include whatever host synchronisations the implementation itself makes (DeepSpeed's fp16
overflow check among them). Model FLOPs per token come from the trainer's own accounting
(``megaphi.train.engine.model_flops_per_token``: 6 N + 12 L H s, no causal discount) and MFU divides
by the trainer's peak table, so these numbers read like the trainer's TFLOP/s and MFU columns.

Implementations (``--impl``, several allowed; each then runs in a fresh process):
  megaphi          megaphi's PhiForCausalLM in the DeepSpeed engine the trainer builds
                   (megaphi.train.engine: generated ZeRO-2 config + ds_configs template, torch AdamW
                   fused on GPU, TP mpu, dynamic loss scaling, clipping at 1.0)
  megaphi-compile  the same with each decoder layer compiled by torch.compile (torchtitan's per-block way)
  hf-deepspeed     transformers' PhiForCausalLM (same shape and dropout) in that same DeepSpeed engine
  hf-eager         transformers' PhiForCausalLM with plain PyTorch mixed precision: fp32 weights,
                   autocast, fused AdamW, GradScaler for fp16, clipping at 1.0
  hf-compile       hf-eager with torch.compile(model)

    python benchmarks/train_throughput.py --impl megaphi --preset phi-1 --seq-len 2048 --micro-batch 8
    python benchmarks/train_throughput.py --smoke --impl megaphi hf-eager     # the CPU check, phi-tiny
    python benchmarks/train_throughput.py --summarize results.jsonl           # a markdown table

One JSON line per implementation goes to stdout (an ``error`` field instead of numbers when it failed,
an out-of-memory included). Weights are drawn directly on the device (benchmark start-up only; the
trainer draws them on the CPU so that every TP size builds the same network).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
IMPLS = ("megaphi", "megaphi-compile", "hf-deepspeed", "hf-eager", "hf-compile")
# The trainer's recipes pair each precision with its DeepSpeed template (configs/*.yaml).
DEEPSPEED_TEMPLATES = {"fp16": "ds_configs/zero2_fp16.json", "bf16": "ds_configs/zero2_bf16.json",
                       "fp32": "ds_configs/cpu.json"}
SMOKE_DEFAULTS = dict(preset="phi-tiny", seq_len=128, micro_batch=2, steps=3, warmup=1, precision="fp32")
GPU_DEFAULTS = dict(preset="phi-1", seq_len=2048, micro_batch=8, steps=20, warmup=5, precision="fp16")
LEARNING_RATE = 1e-4  # constant: the schedule's cost is a float assignment per step either way


@dataclass
class Settings:
    impl: str
    preset: str
    seq_len: int
    micro_batch: int
    grad_accum: int
    steps: int
    warmup: int
    precision: str
    device: str
    hf_attn: str
    activation_checkpointing: bool
    deepspeed_set: list[str] = field(default_factory=list)  # "dotted.key=json" edits of the DeepSpeed template
    seed: int = 1234

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.seq_len


@dataclass
class Bench:
    """A built implementation: ``step(i)`` runs one optimizer step on batch ``i``."""

    step: Callable[[int], None]
    num_params: int
    last_loss: Callable[[], float]
    skipped_steps: Callable[[], int | None]  # fp16 overflow skips so far (None: not tracked)


# ----------------------------------------------------------------------------- building


def model_config(s: Settings):
    from megaphi.model import get_preset

    overrides: dict[str, Any] = {"activation_checkpointing": s.activation_checkpointing}
    config = get_preset(s.preset, **overrides)
    if s.seq_len > config.max_position_embeddings:
        raise ValueError(f"--seq-len {s.seq_len} exceeds {s.preset}'s max_position_embeddings "
                         f"{config.max_position_embeddings}; use --seq-len {config.max_position_embeddings} or less")
    return config


def deepspeed_template(s: Settings) -> str:
    """The recipe's DeepSpeed JSON template, with the ``--deepspeed-set`` edits in a temporary copy."""
    path = REPO / DEEPSPEED_TEMPLATES[s.precision]
    if not s.deepspeed_set:
        return str(path)
    template = json.loads(path.read_text())
    for item in s.deepspeed_set:
        key, value = parse_deepspeed_set(item)
        *parents, leaf = key.split(".")
        node = template
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    edited = Path(tempfile.mkdtemp(prefix="megaphi-ds-")) / path.name
    edited.write_text(json.dumps(template, indent=2))
    return str(edited)


def parse_deepspeed_set(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--deepspeed-set {item!r} must look like zero_optimization.overlap_comm=false")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"--deepspeed-set {item!r}: the value {raw!r} is not JSON (true, 5e8, \"fp16\", ...)") from None


def train_config(s: Settings):
    """The TrainConfig a recipe would hold for this measurement (the trainer's defaults elsewhere)."""
    from megaphi.config import config_from_dict
    from megaphi.train.config import TrainConfig

    return config_from_dict(TrainConfig, {
        "model": {"preset": s.preset, "overrides": {"activation_checkpointing": s.activation_checkpointing}},
        "data": {"seq_len": s.seq_len},
        "optim": {"lr": LEARNING_RATE, "weight_decay": 0.1, "grad_clip": 1.0},
        "train": {"micro_batch_size": s.micro_batch, "global_batch_size": s.micro_batch * s.grad_accum,
                  "precision": s.precision, "zero_stage": 2, "seed": s.seed,
                  "deepspeed_config": deepspeed_template(s)},
    })


def random_batches(s: Settings, vocab_size: int, device):
    """Two distinct micro-batches per accumulation slot, [seq_len + 1] tokens each, already on the device."""
    import torch

    g = torch.Generator().manual_seed(s.seed)
    tokens = torch.randint(vocab_size, (2 * s.grad_accum, s.micro_batch, s.seq_len + 1), generator=g)
    return tokens.to(device)


def hf_model(s: Settings, config):
    import transformers

    from megaphi.convert.hf import hf_config_kwargs

    hf_config = transformers.PhiConfig(**hf_config_kwargs(config), attn_implementation=s.hf_attn)
    model = transformers.PhiForCausalLM(hf_config)
    if s.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def deepspeed_bench(s: Settings, build_model: Callable, forward_loss: Callable) -> Bench:
    """``build_model(model_config)`` inside the trainer's DeepSpeed engine, stepped like the trainer's loop."""
    import torch

    from megaphi import parallel
    from megaphi.train.config import plan_batches
    from megaphi.train.engine import (build_engine, deepspeed_config, init_distributed, set_learning_rate,
                                      training_device)

    init_distributed()
    if not parallel.is_initialized():
        parallel.initialize(1)
    cfg = train_config(s)
    plan = plan_batches(cfg.train, parallel.get_data_parallel_world_size())
    config = model_config(s)
    device = training_device()
    with torch.device(device):
        model = build_model(config)
    num_params = sum(p.numel() for p in model.parameters())
    engine = build_engine(cfg, model, deepspeed_config(cfg, plan))
    batches = random_batches(s, config.vocab_size, device)
    last = {}

    def step(i: int) -> None:
        set_learning_rate(engine, LEARNING_RATE)
        for micro in range(plan.gradient_accumulation_steps):
            tokens = batches[(i * plan.gradient_accumulation_steps + micro) % len(batches)]
            loss = forward_loss(engine, tokens)
            engine.backward(loss)
            engine.step()
        last["loss"] = loss.detach()

    return Bench(step, num_params, lambda: float(last["loss"]), lambda: engine.skipped_steps)


def megaphi_bench(s: Settings, compile_layers: bool) -> Bench:
    from megaphi.train.engine import build_model

    def build(config):
        model = build_model(config, s.seed)
        if compile_layers:
            for layer in model.model.layers:
                layer.compile()
        return model

    return deepspeed_bench(s, build, lambda engine, tokens: engine(tokens[:, :-1], labels=tokens[:, 1:]))


def hf_deepspeed_bench(s: Settings) -> Bench:
    # transformers shifts the labels itself: the same seq_len positions, the same work.
    return deepspeed_bench(s, lambda config: hf_model(s, config),
                           lambda engine, tokens: engine(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss)


def hf_amp_bench(s: Settings, compile_model: bool) -> Bench:
    """The plain PyTorch recipe: fp32 master weights, autocast, fused AdamW, GradScaler for fp16."""
    import torch

    from megaphi.train.engine import param_groups

    device = torch.device(s.device)
    config = model_config(s)
    torch.manual_seed(s.seed)
    with device:
        model = hf_model(s, config).train()
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=LEARNING_RATE, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    forward = torch.compile(model) if compile_model else model
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(s.precision)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 16, enabled=s.precision == "fp16")
    batches = random_batches(s, config.vocab_size, device)
    params = [p for p in model.parameters() if p.requires_grad]
    state: dict[str, Any] = {}

    def step(i: int) -> None:
        for micro in range(s.grad_accum):
            tokens = batches[(i * s.grad_accum + micro) % len(batches)]
            with torch.autocast(device.type, dtype=half or torch.float32, enabled=half is not None):
                loss = forward(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss / s.grad_accum
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state["loss"] = loss.detach() * s.grad_accum

    def skipped() -> int | None:
        # GradScaler halves its scale on every skipped step and grows it only after 2000 clean ones.
        if not scaler.is_enabled():
            return None
        return max(0, round(math.log2(2.0 ** 16 / scaler.get_scale())))

    return Bench(step, num_params, lambda: float(state["loss"]), skipped)


def build(s: Settings) -> Bench:
    if s.impl in ("megaphi", "megaphi-compile"):
        return megaphi_bench(s, compile_layers=s.impl == "megaphi-compile")
    if s.impl == "hf-deepspeed":
        return hf_deepspeed_bench(s)
    return hf_amp_bench(s, compile_model=s.impl == "hf-compile")


# ----------------------------------------------------------------------------- measuring


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(s: Settings) -> dict[str, Any]:
    import torch

    from megaphi.train.engine import model_flops_per_token, peak_tflops

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
        asdict(s), device_name=torch.cuda.get_device_name() if on_cuda else "cpu", torch=torch.__version__,
        params=bench.num_params, flops_per_token=flops_per_token, tokens_per_step=s.tokens_per_step,
        setup_s=round(setup_s, 2), warmup_s=round(warmup_s, 2), step_s=round(elapsed / s.steps, 4),
        tokens_per_s=round(tokens_per_s, 1), model_tflops=round(tflops, 3), peak_tflops=peak,
        mfu=round(tflops / peak, 4) if peak else None, loss=bench.last_loss(),
        skipped_steps=None if skipped_after is None else skipped_after - skipped_before)
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
    out = ["| impl | precision | micro x accum | tokens/s | model TFLOP/s | MFU | step s | peak mem GiB | "
           "skipped | note |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r.get('label', r['impl'])} | {r.get('precision', '')} | {r.get('micro_batch', '')} x "
                       f"{r.get('grad_accum', '')} | - | - | - | - | - | - | {r['error'][:90]} |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        memory = r.get("peak_memory_gib", r.get("peak_rss_gib"))
        out.append(f"| {r.get('label', r['impl'])} | {r['precision']} | {r['micro_batch']} x {r['grad_accum']} | "
                   f"{r['tokens_per_s']:,.0f} | {r['model_tflops']:.3g} | {mfu} | {r['step_s']:.3f} | {memory} | "
                   f"{'-' if r['skipped_steps'] is None else r['skipped_steps']} | {r['device_name']}, "
                   f"setup {r['setup_s']:.0f} s, warm-up {r['warmup_s']:.0f} s |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Training throughput and MFU of megaphi and transformers' Phi "
                                "(one JSON line per implementation).")
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=["megaphi"], metavar="IMPL",
                   help=f"one or more of {', '.join(IMPLS)} (default megaphi); several run one after another, each in a "
                        "fresh process")
    p.add_argument("--preset", help="megaphi model preset (default phi-1; phi-tiny with --smoke)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048; 128 with --smoke)")
    p.add_argument("--micro-batch", type=int, help="sequences per forward pass (default 8; 2 with --smoke)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default 20; 3 with --smoke)")
    p.add_argument("--warmup", type=int, help="untimed optimizer steps first (default 5; 1 with --smoke)")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"),
                   help="default fp16 (the paper's), fp32 with --smoke")
    p.add_argument("--hf-attn", choices=("sdpa", "eager"), default="sdpa",
                   help="transformers' attn_implementation for the hf-* impls (default sdpa, its default)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each layer in backward")
    p.add_argument("--deepspeed-set", action="append", default=[], metavar="KEY=JSON",
                   help="edit the recipe's DeepSpeed template for the DeepSpeed impls, e.g. "
                        "zero_optimization.overlap_comm=false (repeatable)")
    p.add_argument("--smoke", action="store_true", help="check the script on the CPU with a tiny model")
    p.add_argument("--summarize", type=Path, metavar="JSONL", help="print a markdown table of earlier results")
    return p


def settings_from_args(args: argparse.Namespace, impl: str) -> Settings:
    import torch

    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    for name in ("seq_len", "micro_batch", "steps", "grad_accum"):
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
    return Settings(impl=impl, grad_accum=args.grad_accum, device=device, hf_attn=args.hf_attn,
                    activation_checkpointing=args.activation_checkpointing, deepspeed_set=args.deepspeed_set,
                    **values)


def run_each_in_subprocess(argv: list[str], impls: list[str]) -> int:
    """Run every impl in a fresh process (clean device memory and compiler caches), forward its JSON line."""
    rest, skip = [], False
    for i, arg in enumerate(argv):  # drop the --impl list, keep every other argument
        if arg == "--impl":
            skip = True
            continue
        if skip and not arg.startswith("--"):
            continue
        skip = False
        rest.append(arg)
    status = 0
    for impl in impls:
        proc = subprocess.run([sys.executable, __file__, *rest, "--impl", impl], stdout=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else json.dumps({"impl": impl, "error": f"exited with status {proc.returncode}"}),
              flush=True)
        status = status or proc.returncode
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
    if len(args.impl) > 1:
        return run_each_in_subprocess(argv, args.impl)
    if args.smoke:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported
        # One thread: on a shared CPU, more threads than free cores make every op wait (10-40x slower here).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
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
        print(json.dumps({**asdict(settings), "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}),
              flush=True)
        if isinstance(e, ConfigError):  # a bad --deepspeed-set, say: the message says what to change
            print(f"train_throughput: error: {e}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
