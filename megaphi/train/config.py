"""The training recipe's schema: one typed section per concern, loaded by :func:`megaphi.config.load_config`.

    cfg = load_config(TrainConfig, "configs/phi_tiny_cpu.yaml", ["optim.lr=3e-4", "train.steps=10"])

Every field is checked against its annotation when the recipe is loaded (``model.overrides`` too:
its fields are the model config's own), so a typo fails with one line naming the dotted field.
Checks that need the files or the launch (datasets, checkpoints, world size) are the trainer's
preflight (:mod:`megaphi.train.preflight`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megaphi.config import ConfigError, check_positive
from megaphi.model.config import PhiConfig


class _Overrides:
    """What every generated ``ModelOverrides`` does besides holding its fields."""

    def changes(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {name: value for name, value in vars(self).items() if value is not None}


def _model_overrides_class() -> type[_Overrides]:
    """A dataclass with every PhiConfig field, typed as in PhiConfig but optional: None keeps the base's value.

    Generated from PhiConfig, so the model config stays the one place that lists the model's fields.
    """
    hints = typing.get_type_hints(PhiConfig)
    fields = [(f.name, hints[f.name] | None, dataclasses.field(default=None)) for f in dataclasses.fields(PhiConfig)]
    cls = dataclasses.make_dataclass("ModelOverrides", fields, bases=(_Overrides,))
    cls.__module__ = __name__  # so that pickles (a broadcast config) find it
    cls.__doc__ = "PhiConfig fields that differ from the preset (or the init_from checkpoint); unset fields are None."
    return cls


if typing.TYPE_CHECKING:  # a class built at run time has no static fields; the checker sees what it offers
    ModelOverrides = _Overrides
else:
    ModelOverrides = _model_overrides_class()


@dataclass
class ModelSection:
    preset: str = "phi-tiny"  # megaphi.model.get_preset name
    overrides: ModelOverrides = field(default_factory=ModelOverrides)  # PhiConfig fields that differ from the preset


@dataclass
class DataSection:
    # Megatron's --data-path forms: ["prefix"], ["p1", "p2"] (blended by size) or ["0.7", "p1", "0.3", "p2"];
    # a prefix is the path of a .bin/.idx pair without the extension.
    paths: list[str | float] = field(default_factory=list)
    split: str = "969,30,1"  # train/valid/test shares of each dataset's documents
    seq_len: int = 2048
    tokenizer: str | None = None  # Hugging Face tokenizer directory, copied into checkpoints
    num_workers: int = 0  # DataLoader worker processes per rank
    cache_dir: str | None = None  # sample-index cache; default: next to each dataset

    def check(self, prefix: str) -> None:
        check_positive(prefix, self, "seq_len")
        check_positive(prefix, self, "num_workers", allow_zero=True)
        self.paths = [str(p) for p in self.paths]  # an unquoted weight in YAML is a number


@dataclass
class OptimSection:
    lr: float = 1e-3
    min_lr: float = 0.0  # where the decay ends
    warmup_steps: int = 0
    decay: Literal["linear", "cosine", "constant"] = "linear"
    # The step where the decay reaches min_lr (it stays there after); null: train.steps. Set it to the
    # saved run's train.steps to extend a run on its original schedule.
    decay_steps: int | None = None
    weight_decay: float = 0.1  # not applied to biases and LayerNorm
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    backend: Literal["auto", "torch", "apex"] = "auto"  # apex's FusedAdam on GPU where installed, else torch AdamW

    def check(self, prefix: str) -> None:
        check_positive(prefix, self, "lr", "decay_steps")
        check_positive(prefix, self, "min_lr", "warmup_steps", "weight_decay", "grad_clip", "eps", allow_zero=True)
        if self.min_lr > self.lr:
            raise ConfigError(f"{prefix}.min_lr: {self.min_lr} exceeds optim.lr {self.lr}")


@dataclass
class TrainSection:
    steps: int = 100  # optimizer steps (skipped fp16 steps included)
    global_batch_size: int = 8  # sequences per optimizer step, over all data-parallel ranks
    micro_batch_size: int = 1  # sequences per forward pass on one rank
    gradient_accumulation_steps: int | None = None  # derived from the two above when null
    tensor_parallel_size: int = 1
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    zero_stage: Literal[0, 1, 2] = 2
    seed: int = 1234
    initial_loss_scale_power: int = 16  # fp16: start at 2**power
    loss_scale_window: int = 1000  # fp16: overflow-free steps before the scale doubles
    loss_scale_hysteresis: int = 2  # fp16: consecutive overflows before the scale is halved
    min_loss_scale: float = 1.0
    max_steps_at_min_loss_scale: int = 100  # fp16: stop after this many overflows at the minimum scale
    deepspeed_config: str | None = None  # JSON template under ds_configs/; batch and optimizer keys are ours
    peak_tflops: float | None = None  # per device, for MFU; None: looked up from the GPU name
    # torch.compile: "blocks" (each decoder layer) or "model" (the whole forward, loss included); checkpoints are
    # the same either way, so a run may resume with another choice (megaphi.model.compile)
    compile: Literal["none", "blocks", "model"] = "none"

    def check(self, prefix: str) -> None:
        check_positive(
            prefix,
            self,
            "steps",
            "global_batch_size",
            "micro_batch_size",
            "gradient_accumulation_steps",
            "tensor_parallel_size",
            "loss_scale_window",
            "loss_scale_hysteresis",
            "min_loss_scale",
            "max_steps_at_min_loss_scale",
            "peak_tflops",
        )


@dataclass
class CheckpointSection:
    dir: str | None = None  # default: <run_dir>/checkpoints
    interval: int = 1000  # steps between saves; the last step is always saved
    keep_last: int = 3  # older checkpoints are deleted; 0 keeps all
    init_from: str | None = None  # model checkpoint to start from (finetuning); ignored on resume

    def check(self, prefix: str) -> None:
        check_positive(prefix, self, "interval")
        check_positive(prefix, self, "keep_last", allow_zero=True)


@dataclass
class LoggingSection:
    interval: int = 10  # steps between console lines and host synchronisations
    tensorboard: bool = True
    plot: bool = True  # loss-curve PNG at the end

    def check(self, prefix: str) -> None:
        check_positive(prefix, self, "interval")


@dataclass
class EvalSection:
    interval: int = 1000  # steps between validation passes; 0 disables
    batches: int = 10  # micro batches per rank per validation pass

    def check(self, prefix: str) -> None:
        check_positive(prefix, self, "interval", allow_zero=True)
        check_positive(prefix, self, "batches")


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.run_dir) / "checkpoints"

    def check(self, prefix: str) -> None:
        if self.optim.warmup_steps > self.train.steps:
            raise ConfigError(f"optim.warmup_steps: {self.optim.warmup_steps} exceeds train.steps {self.train.steps}")
        if self.optim.decay_steps is not None and self.optim.warmup_steps > self.optim.decay_steps:
            raise ConfigError(
                f"optim.warmup_steps: {self.optim.warmup_steps} exceeds optim.decay_steps {self.optim.decay_steps}"
            )


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    data_parallel_size: int


def plan_batches(train: TrainSection, data_parallel_size: int) -> BatchPlan:
    """global = micro x accumulation x data-parallel size, or a ConfigError naming the field to change."""
    g, m, dp = train.global_batch_size, train.micro_batch_size, data_parallel_size
    per_step = m * dp
    if train.gradient_accumulation_steps is None:
        if g % per_step:
            raise ConfigError(
                f"train.global_batch_size: {g} is not divisible by micro_batch_size {m} x data-parallel size {dp} "
                f"= {per_step}; use a multiple of {per_step}"
            )
        return BatchPlan(g, m, g // per_step, dp)
    accum = train.gradient_accumulation_steps
    if per_step * accum != g:
        raise ConfigError(
            f"train.global_batch_size: {g} != micro_batch_size {m} x gradient_accumulation_steps {accum} x "
            f"data-parallel size {dp} = {per_step * accum}; set train.gradient_accumulation_steps=null to derive it"
        )
    return BatchPlan(g, m, accum, dp)
