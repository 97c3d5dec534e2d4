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

(Over 400 lines on purpose: one script holds every implementation's setup side by side, so that what
differs between them can be read and compared in one place; each still runs in its own process.)
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
# The trainer's recipes pair each precision with its DeepSpeed template (configs/*.yaml).
DEEPSPEED_TEMPLATES = {
    "fp16": "ds_configs/zero2_fp16.json",
    "bf16": "ds_configs/zero2_bf16.json",
    "fp32": "ds_configs/cpu.json",
}
SMOKE_DEFAULTS = dict(preset="phi-tiny", seq_len=128, micro_batch="2", steps=3, warmup=1, precision="fp32")
GPU_DEFAULTS = dict(preset="phi-1", seq_len=2048, micro_batch="8", steps=20, warmup=5, precision="fp16")
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
    compile: str = "none"  # train.compile for the megaphi impls
    zero_stage: int = 2
    cross_entropy: str = "auto"  # PhiConfig.cross_entropy for the megaphi impls
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

    config = get_preset(s.preset, **megaphi_overrides(s))
    if s.seq_len > config.max_position_embeddings:
        raise ValueError(
            f"--seq-len {s.seq_len} exceeds {s.preset}'s max_position_embeddings "
            f"{config.max_position_embeddings}; use --seq-len {config.max_position_embeddings} or less"
        )
    return config


def megaphi_overrides(s: Settings) -> dict[str, Any]:
    return {"activation_checkpointing": s.activation_checkpointing, "cross_entropy": s.cross_entropy}


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
        raise ValueError(f'--deepspeed-set {item!r}: the value {raw!r} is not JSON (true, 5e8, "fp16", ...)') from None


def train_config(s: Settings):
    """The TrainConfig a recipe would hold for this measurement (the trainer's defaults elsewhere)."""
    from megaphi.config import config_from_dict
    from megaphi.train.config import TrainConfig

    return config_from_dict(
        TrainConfig,
        {
            "model": {"preset": s.preset, "overrides": megaphi_overrides(s)},
            "data": {"seq_len": s.seq_len},
            "optim": {"lr": LEARNING_RATE, "weight_decay": 0.1, "grad_clip": 1.0},
            "train": {
                "micro_batch_size": s.micro_batch,
                "global_batch_size": s.micro_batch * s.grad_accum,
                "precision": s.precision,
                "zero_stage": s.zero_stage,
                "seed": s.seed,
                "compile": s.compile,
                "deepspeed_config": deepspeed_template(s),
            },
        },
    )


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
    from megaphi.train.engine import (
        build_engine,
        deepspeed_config,
        init_distributed,
        set_learning_rate,
        training_device,
    )

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


def megaphi_bench(s: Settings) -> Bench:
    """The trainer's model in the trainer's engine; build_engine applies train.compile (--compile)."""
    from megaphi.train.engine import build_model

    return deepspeed_bench(
        s,
        lambda config: build_model(config, s.seed),
        lambda engine, tokens: engine(tokens[:, :-1], labels=tokens[:, 1:]),
    )


def hf_deepspeed_bench(s: Settings) -> Bench:
    # transformers shifts the labels itself: the same seq_len positions, the same work.
    return deepspeed_bench(
        s,
        lambda config: hf_model(s, config),
        lambda engine, tokens: engine(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss,
    )


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
    optimizer = torch.optim.AdamW(
        param_groups(model, 0.1), lr=LEARNING_RATE, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    forward = torch.compile(model) if compile_model else model
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(s.precision)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16, enabled=s.precision == "fp16")
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
        return max(0, round(math.log2(2.0**16 / scaler.get_scale())))

    return Bench(step, num_params, lambda: float(state["loss"]), skipped)


def init_single_process_group(device: str) -> None:
    """A one-process torch.distributed group for the peers that need one (FSDP2, Megatron's DDP)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for key, value in (
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29517"),
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
    ):
        os.environ.setdefault(key, value)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=0, world_size=1)


def fp_dtype(precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def torchtitan_bench(s: Settings) -> Bench:
    """torchtitan's Llama 3 at phi-1's size, set up the way torchtitan's trainer does for one GPU:
    model on the meta device, each block compiled then fully_shard'ed (FSDP2, bf16 parameters, fp32
    reductions), the root sharded, weights materialised on the device, fused AdamW."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm, compute_ffn_hidden_dim
    from torchtitan.models.llama3 import Llama3Model, _build_llama3_layers

    if s.precision == "fp16":
        raise ValueError("torchtitan's FSDP2 recipe has no fp16 loss scaler; measure it with --precision bf16")
    config = model_config(s)
    device = torch.device(s.device)
    init_single_process_group(s.device)
    dim, heads, vocab = config.hidden_size, config.num_attention_heads, config.vocab_size
    init = {"weight": torch.nn.init.ones_}
    linear_init = {"weight": lambda t: torch.nn.init.normal_(t, std=0.02), "bias": torch.nn.init.zeros_}
    titan_config = Llama3Model.Config(
        dim=dim,
        vocab_size=vocab,
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim, param_init=linear_init),
        norm=RMSNorm.Config(normalized_shape=dim, param_init=init),
        lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init=linear_init),
        # SwiGLU has three matrices: 2/3 of phi's 4x hidden, rounded to 128, keeps the MLP FLOPs (+0.8%).
        layers=_build_llama3_layers(
            n_layers=config.num_hidden_layers,
            dim=dim,
            n_heads=heads,
            hidden_dim=compute_ffn_hidden_dim(dim, multiple_of=128),
            rope=ComplexRoPE.Config(dim=dim // heads, max_seq_len=s.seq_len, theta=config.rope_theta),
            attn_backend="flex",
            fuse_qkv=True,
        ),
    )
    torch.manual_seed(s.seed)
    with torch.device("meta"):
        model = titan_config.build()
    mesh = init_device_mesh(device.type, (1,))
    policy = MixedPrecisionPolicy(param_dtype=fp_dtype(s.precision), reduce_dtype=torch.float32)
    for name, block in model.layers.named_children():
        block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=device)
    model.train()
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda"
    )
    batches = random_batches(s, vocab, device)
    positions = torch.arange(s.seq_len, device=device).expand(s.micro_batch, -1)
    masks = model.get_attention_masks(positions=positions)  # one document per row: plain causal
    state: dict[str, Any] = {}

    def step(i: int) -> None:
        for micro in range(s.grad_accum):
            tokens = batches[(i * s.grad_accum + micro) % len(batches)]
            logits = model(tokens[:, :-1], positions=positions, attention_masks=masks)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()) / s.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["loss"] = loss.detach() * s.grad_accum

    return Bench(step, num_params, lambda: float(state["loss"]), lambda: None)


def megatron_bench(s: Settings) -> Bench:
    """megatron-core's GPTModel, local layer spec, phi-1's shape, its DDP + distributed optimizer, fp16."""
    import torch
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.module import Float16Module
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = model_config(s)
    device = torch.device(s.device)
    init_single_process_group(s.device)
    parallel_state.initialize_model_parallel(1, 1)
    torch.manual_seed(s.seed)
    if device.type == "cuda":
        model_parallel_cuda_manual_seed(s.seed)
    half = s.precision in ("fp16", "bf16")
    transformer = TransformerConfig(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        normalization="LayerNorm",
        layernorm_epsilon=config.layer_norm_eps,
        add_bias_linear=True,
        activation_func=lambda x: F.gelu(x, approximate="tanh"),
        hidden_dropout=config.resid_pdrop,
        attention_dropout=config.attention_dropout,
        fp16=s.precision == "fp16",
        bf16=s.precision == "bf16",
        params_dtype=fp_dtype(s.precision),
        use_cpu_initialization=device.type != "cuda",
        init_method_std=config.initializer_range,
        # the fused paths need apex or Transformer Engine, which the local spec is meant to run without
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=False,
    )
    model = GPTModel(
        transformer,
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=config.vocab_size,
        max_sequence_length=s.seq_len,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_percent=config.partial_rotary_factor,
        rotary_base=int(config.rope_theta),
    ).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    if half:
        model = Float16Module(transformer, model)
    ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True)
    model = DistributedDataParallel(transformer, ddp, model)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=LEARNING_RATE,
            weight_decay=0.1,
            adam_beta1=0.9,
            adam_beta2=0.95,
            fp16=s.precision == "fp16",
            bf16=s.precision == "bf16",
            params_dtype=fp_dtype(s.precision),
            initial_loss_scale=2.0**16,
            use_distributed_optimizer=True,
            clip_grad=1.0,
        ),
        [model],
    )
    batches = random_batches(s, config.vocab_size, device)
    positions = torch.arange(s.seq_len, device=device).expand(s.micro_batch, -1)
    state: dict[str, Any] = {"skipped": 0}

    def step(i: int) -> None:
        model.zero_grad_buffer()
        optimizer.zero_grad()
        for micro in range(s.grad_accum):
            tokens = batches[(i * s.grad_accum + micro) % len(batches)]
            per_token = model(tokens[:, :-1], positions, attention_mask=None, labels=tokens[:, 1:])
            loss = per_token.float().mean() / s.grad_accum
            optimizer.scale_loss(loss).backward()
        model.finish_grad_sync()
        updated, _, _ = optimizer.step()
        state["skipped"] += not updated
        state["loss"] = loss.detach() * s.grad_accum

    return Bench(
        step, num_params, lambda: float(state["loss"]), lambda: state["skipped"] if s.precision == "fp16" else None
    )


def build(s: Settings) -> Bench:
    if s.impl in ("megaphi", "megaphi-compile"):
        return megaphi_bench(s)
    if s.impl == "torchtitan":
        return torchtitan_bench(s)
    if s.impl == "megatron":
        return megatron_bench(s)
    if s.impl == "hf-deepspeed":
        return hf_deepspeed_bench(s)
    return hf_amp_bench(s, compile_model=s.impl == "hf-compile")


# ----------------------------------------------------------------------------- measuring


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_random_corpus(prefix: Path, vocab_size: int, num_tokens: int, seed: int) -> None:
    """A real .bin/.idx pair of uniformly random token ids, documents of 8192 tokens, by megaphi's writer."""
    import numpy as np

    from megaphi.data import IndexedDatasetWriter

    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(str(prefix), np.uint16 if vocab_size <= 2**16 else np.int32) as writer:
        for _ in range(max(1, math.ceil(num_tokens / 8192))):
            writer.add_document(rng.integers(0, vocab_size, 8192))


def gpu_memory_used_gib() -> float | None:
    """Device memory in use (every process, allocator caches included), from nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return round(float(out.split()[0]) / 1024, 2)
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def logged_records(metrics_path: Path) -> list[dict[str, Any]]:
    """The trainer's metrics.jsonl so far (a line it is still writing is left out)."""
    records = []
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def measure_trainer_loop(s: Settings) -> dict[str, Any]:
    """``python -m megaphi.train`` on a fresh random corpus; throughput from the trainer's own metrics.

    The trainer logs every ``warmup`` steps (its one host synchronisation per log interval); the
    first interval is the warm-up and is left out. The process is stopped once the last step is
    logged, before its final checkpoint, which would only cost time here.
    """
    import torch
    import yaml

    from megaphi.model import PhiForCausalLM
    from megaphi.train.engine import model_flops_per_token, peak_tflops_of

    config = model_config(s)
    interval = max(1, s.warmup)
    timed_steps = math.ceil(s.steps / interval) * interval
    total_steps = (interval if s.warmup else 0) + timed_steps
    work = Path(tempfile.mkdtemp(prefix="megaphi-trainer-bench-"))
    tokens_needed = int(total_steps * s.tokens_per_step * 1.2) + 2 * (s.seq_len + 1) * s.micro_batch
    write_random_corpus(work / "random_text_document", config.vocab_size, tokens_needed, s.seed)
    recipe = {
        "run_dir": str(work / "run"),
        "model": {"preset": s.preset, "overrides": megaphi_overrides(s)},
        "data": {
            "paths": [str(work / "random_text_document")],
            "split": "100,0,0",
            "seq_len": s.seq_len,
            "num_workers": 2 if s.device.startswith("cuda") else 0,
        },
        "optim": {"lr": LEARNING_RATE, "weight_decay": 0.1, "grad_clip": 1.0, "warmup_steps": 0},
        "train": {
            "steps": total_steps,
            "micro_batch_size": s.micro_batch,
            "global_batch_size": s.micro_batch * s.grad_accum,
            "precision": s.precision,
            "zero_stage": s.zero_stage,
            "seed": s.seed,
            "compile": s.compile,
            "deepspeed_config": deepspeed_template(s),
        },
        "checkpoint": {"interval": 10**9, "keep_last": 1},
        "logging": {"interval": interval, "tensorboard": False, "plot": False},
        "eval": {"interval": 0},
    }
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    metrics_path = work / "run" / "metrics.jsonl"
    start = time.perf_counter()
    with open(work / "trainer.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "megaphi.train", "--config", str(work / "recipe.yaml")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        peak_gib, first_record_s, polls = None, None, 0
        flushed_at: dict[int, float] = {}  # records logged -> when metrics.jsonl was written (the OS's clock)
        try:
            while proc.poll() is None:
                time.sleep(0.1)
                polls += 1
                if s.device.startswith("cuda") and polls % 20 == 0:
                    used = gpu_memory_used_gib()
                    peak_gib = used if peak_gib is None or (used or 0) > peak_gib else peak_gib
                records = logged_records(metrics_path)
                if records and len(records) not in flushed_at:
                    flushed_at[len(records)] = metrics_path.stat().st_mtime
                if records and first_record_s is None:
                    first_record_s = time.perf_counter() - start
                if records and records[-1]["step"] >= total_steps:
                    break  # the last step is logged: skip the final checkpoint
        finally:  # also when this process is interrupted: never leave a trainer holding the device
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
    output = (work / "trainer.log").read_text()
    records = logged_records(metrics_path)
    if not records or records[-1]["step"] < total_steps:
        last = [line for line in output.splitlines() if line.strip()][-3:]
        if "OutOfMemoryError" in output or "out of memory" in output:
            raise RuntimeError(f"OutOfMemoryError in the trainer: {' / '.join(last)[:300]}")
        raise RuntimeError(f"the trainer exited with status {proc.returncode}: {' / '.join(last)[:300]}")
    timed = [r for r in records if r["step"] > total_steps - timed_steps]
    # Our own clock: the file times of the flush that ended the warm-up and of the last one (each flush is
    # seen, since the trainer spends at least a step between flushes and this loop polls every 0.1 s).
    warm = total_steps - timed_steps
    if warm and warm in flushed_at and total_steps in flushed_at:
        seconds = flushed_at[total_steps] - flushed_at[warm]
    else:  # no warm-up flush to start from: the trainer's own interval times
        seconds = sum(interval * s.tokens_per_step / r["tokens_per_s"] for r in timed[interval - 1 :: interval])
    tokens_per_s = timed_steps * s.tokens_per_step / seconds
    # the trainer's own figure: each record's interval tokens/s, averaged over the time it covers
    logged_tokens_per_s = timed_steps / sum(1 / r["tokens_per_s"] for r in timed)
    with torch.device("meta"):
        num_params = sum(p.numel() for p in PhiForCausalLM(config).parameters())
    flops_per_token = model_flops_per_token(config, num_params, s.seq_len)
    on_cuda = s.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    peak = peak_tflops_of(device_name) if on_cuda else None
    tflops = tokens_per_s * flops_per_token / 1e12
    logged_mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    kernels = next((line.split("kernels: ", 1)[1] for line in output.splitlines() if "kernels: " in line), None)
    return dict(
        asdict(s),
        device_name=device_name,
        torch=torch.__version__,
        params=num_params,
        flops_per_token=flops_per_token,
        tokens_per_step=s.tokens_per_step,
        setup_s=round(first_record_s or 0, 2),
        warmup_s=0.0,
        step_s=round(seconds / timed_steps, 4),
        tokens_per_s=round(tokens_per_s, 1),
        model_tflops=round(tflops, 3),
        peak_tflops=peak,
        mfu=round(tflops / peak, 4) if peak else None,
        trainer_logged_mfu=round(sum(logged_mfu) / len(logged_mfu), 4) if logged_mfu else None,
        trainer_logged_tokens_per_s=round(logged_tokens_per_s, 1),
        loss=records[-1]["loss"],
        skipped_steps=sum(bool(r["skipped"]) for r in timed),
        kernels=kernels,
        **({"peak_memory_gib": peak_gib} if on_cuda else {}),
    )


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
        skipped_steps=None if skipped_after is None else skipped_after - skipped_before,
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
