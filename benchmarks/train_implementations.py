"""How each implementation of benchmarks/train_throughput.py builds one optimizer step: megaphi's model
and transformers' in the trainer's DeepSpeed engine, transformers with plain PyTorch mixed precision,
torchtitan's Llama 3 under FSDP2, and megatron-core's GPTModel; each returns a :class:`Bench`.

(Over 400 lines on purpose: every implementation's setup stands side by side, so that what differs
between them can be read and compared in one place; each still runs in its own process.)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the heavy imports stay inside the functions: each implementation imports only its own
    import torch
    import transformers

    from megaphi.model.config import PhiConfig
    from megaphi.train.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
# The trainer's recipes pair each precision with its DeepSpeed template (configs/*.yaml).
DEEPSPEED_TEMPLATES = {
    "fp16": "ds_configs/zero2_fp16.json",
    "bf16": "ds_configs/zero2_bf16.json",
    "fp32": "ds_configs/cpu.json",
}
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


def model_config(s: Settings) -> PhiConfig:
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


def train_section(s: Settings) -> dict[str, Any]:
    """The recipe's ``train:`` section for this measurement: batch, precision, ZeRO stage, compile, template."""
    return {
        "micro_batch_size": s.micro_batch,
        "global_batch_size": s.micro_batch * s.grad_accum,
        "precision": s.precision,
        "zero_stage": s.zero_stage,
        "seed": s.seed,
        "compile": s.compile,
        "deepspeed_config": deepspeed_template(s),
    }


def train_config(s: Settings) -> TrainConfig:
    """The TrainConfig a recipe would hold for this measurement (the trainer's defaults elsewhere)."""
    from megaphi.config import config_from_dict
    from megaphi.train.config import TrainConfig

    return config_from_dict(
        TrainConfig,
        {
            "model": {"preset": s.preset, "overrides": megaphi_overrides(s)},
            "data": {"seq_len": s.seq_len},
            "optim": {"lr": LEARNING_RATE, "weight_decay": 0.1, "grad_clip": 1.0},
            "train": train_section(s),
        },
    )


def random_batches(s: Settings, vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """Two distinct micro-batches per accumulation slot, [seq_len + 1] tokens each, already on the device."""
    import torch

    g = torch.Generator().manual_seed(s.seed)
    tokens = torch.randint(vocab_size, (2 * s.grad_accum, s.micro_batch, s.seq_len + 1), generator=g)
    return tokens.to(device)


def hf_model(s: Settings, config: PhiConfig) -> transformers.PhiForCausalLM:
    import transformers

    from megaphi.convert.hf import hf_config_kwargs

    # attn_implementation reaches PreTrainedConfig through the config dataclass's **kwargs, which its typed
    # signature leaves out
    hf_config = transformers.PhiConfig(**hf_config_kwargs(config), attn_implementation=s.hf_attn)  # type: ignore[call-arg]
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


def fp_dtype(precision: str) -> torch.dtype:
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
