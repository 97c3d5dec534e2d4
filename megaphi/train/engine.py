"""Process groups, the model, and the DeepSpeed engine (ZeRO stage 2 over the tensor-parallel groups).

The DeepSpeed config is generated from the typed ``TrainConfig``: batch sizes, precision, loss
scaling and clipping have a single source of truth. A JSON template (``ds_configs/*.json``) may
add engine tuning (ZeRO bucket sizes, communication overlap) but may not set the keys we own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from megaphi import parallel
from megaphi.config import ConfigError
from megaphi.model import PhiConfig, PhiForCausalLM, get_preset
from megaphi.model.compile import compile_model
from megaphi.parallel.layers import partition_of
from megaphi.train.config import BatchPlan, TrainConfig
from megaphi.train.deepspeed_compat import apply_loss_scale_policy
from megaphi.train.launch_env import LaunchEnv, discover
from megaphi.train.optimizer import build_optimizer, param_groups  # noqa: F401  (param_groups re-exported)

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

# Keys of the DeepSpeed config that the typed config owns; a template setting them would be a
# second, silently ignored source of truth.
_OWNED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
)


def on_gpu() -> bool:
    """Whether DeepSpeed's accelerator (``DS_ACCELERATOR``, else detected) is CUDA."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cuda"


def training_device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def init_distributed(launch: LaunchEnv | None = None) -> None:
    """Join the job's process group whichever launcher started us (a plain ``python -m`` included);
    ``launch`` is the discovered launch when the caller has it already."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if dist.is_initialized():
        return
    launch = (launch or discover()).apply_to_environ()
    if on_gpu():
        get_accelerator().set_device(launch.local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo", auto_mpi_discovery=False)


def resolve_model_config(cfg: TrainConfig, base: PhiConfig | None = None) -> PhiConfig:
    """The preset (or ``base``, the config of an ``init_from`` checkpoint) with ``model.overrides`` applied."""
    try:
        model_config = base if base is not None else get_preset(cfg.model.preset)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"model.preset: {e}") from None
    try:
        return PhiConfig.from_dict({**model_config.to_dict(), **cfg.model.overrides.changes()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.overrides: {e}") from None


def deepspeed_config(cfg: TrainConfig, plan: BatchPlan) -> dict[str, Any]:
    t = cfg.train
    config: dict[str, Any] = {}
    if t.deepspeed_config is not None:
        path = Path(t.deepspeed_config)
        if not path.is_file():
            raise ConfigError(f"train.deepspeed_config: no such file {str(path)!r}")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"train.deepspeed_config: {path} is not valid JSON ({e})") from None
        for key in _OWNED_KEYS:
            if key in config:
                raise ConfigError(
                    f"train.deepspeed_config: {path} sets {key!r}, which comes from the training "
                    "config (train.* / optim.*); remove it from the JSON"
                )
    zero = dict(config.get("zero_optimization", {}))
    zero["stage"] = t.zero_stage
    # Elastic ZeRO checkpoints re-partition optimizer state, so a run can resume on another DP size.
    zero.setdefault("elastic_checkpoint", True)
    if plan.data_parallel_size == 1:
        # Nothing to overlap with one data-parallel rank, and with overlap_comm DeepSpeed synchronises
        # the whole device at the end of every backward.
        zero["overlap_comm"] = False
    fp16 = dict(config.get("fp16", {}))
    fp16.update(
        enabled=t.precision == "fp16",
        loss_scale=0,
        initial_scale_power=t.initial_loss_scale_power,
        loss_scale_window=t.loss_scale_window,
        min_loss_scale=t.min_loss_scale,
        hysteresis=t.loss_scale_hysteresis,
    )
    bf16 = dict(config.get("bf16", {}), enabled=t.precision == "bf16")
    config.update(
        train_batch_size=plan.global_batch_size,
        train_micro_batch_size_per_gpu=plan.micro_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        gradient_clipping=cfg.optim.grad_clip,
        zero_optimization=zero,
        fp16=fp16,
        bf16=bf16,
        # The client optimizer is torch's AdamW: no JIT-compiled DeepSpeed op needed on any device.
        zero_allow_untested_optimizer=True,
    )
    config.setdefault("steps_per_print", 10**9)  # our own console line replaces DeepSpeed's
    config.setdefault("wall_clock_breakdown", False)
    return config


def build_model(model_config: PhiConfig, seed: int) -> PhiForCausalLM:
    """Seed every stream, then build: the weights depend on the seed only, not on the TP size."""
    parallel.seed_everything(seed)
    return PhiForCausalLM(model_config)


def build_engine(cfg: TrainConfig, model: PhiForCausalLM, ds_config: dict[str, Any]) -> DeepSpeedEngine:
    """``deepspeed.initialize`` with AdamW (megaphi.train.optimizer), the TP mpu and the generated ``ds_config``;
    the model compiled first as ``train.compile`` says."""
    import deepspeed

    compile_model(model, cfg.train.compile)
    optimizer, optimizer_name = build_optimizer(model, cfg.optim, on_gpu())
    if dist.get_rank() == 0:
        kernels = model.kernel_choices(training_device())
        print(f"megaphi.train: kernels: {kernels}, optimizer {optimizer_name}, compile {cfg.train.compile}", flush=True)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, mpu=parallel.mpu, dist_init_required=False
    )
    apply_loss_scale_policy(engine, cfg.train)
    return engine


def set_learning_rate(engine: DeepSpeedEngine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def model_flops_per_token(model_config: PhiConfig, num_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N for the matmuls (forward 2N, backward 4N) plus 12 L H s for attention.

    N counts every parameter except the input embedding table (a lookup, not a matmul); the attention
    term is QK^T and AV (2 x 2 s H FLOPs per token per layer forward, x3 with the backward), without
    discounting the causal mask, as in the PaLM / Megatron MFU convention.
    """
    c = model_config
    embedding = c.vocab_size * c.hidden_size
    return 6.0 * (num_params - embedding) + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len


# Dense fp16/bf16 tensor-core peak per device, TFLOP/s; override with train.peak_tflops.
# The first name contained in torch's device name wins: the PCIe and NVL H100s before the SXM part.
_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "A10": 125.0,
    "V100": 125.0,
    "L4": 121.0,
}


def peak_tflops(configured: float | None) -> float | None:
    if configured is not None:
        return configured
    if not on_gpu():
        return None
    return peak_tflops_of(torch.cuda.get_device_name())


def peak_tflops_of(device_name: str) -> float | None:
    """Dense fp16/bf16 peak of a device by torch's name for it; None when unknown."""
    return next((v for k, v in _PEAK_TFLOPS.items() if k in device_name), None)


def full_parameter_count(model: torch.nn.Module) -> int:
    """Parameters of the whole model (all tensor-parallel shards), counted from this rank's shards."""
    tp = parallel.get_tensor_parallel_world_size()
    return sum(p.numel() * (tp if partition_of(p) is not None else 1) for p in model.parameters())
