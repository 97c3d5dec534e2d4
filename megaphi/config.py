"""Typed configs: dataclasses loaded from YAML, with dotted command-line overrides.

``load_config(TrainConfig, "configs/phi_tiny_cpu.yaml", ["optim.lr=3e-4", "train.steps=10"])``
builds the dataclass tree, checking every value against its annotation. Any problem raises one
``ConfigError`` whose message starts with the dotted name of the offending field, so a typo in a
100-line recipe points at the line to fix instead of failing deep inside training.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from megaphi.common.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config that cannot be used; the message names the dotted field and what to do."""


# ----------------------------------------------------------------------------- generic loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``name``. Only lossless conversions."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{name}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, name)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e3 in YAML is a float
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{name}: unsupported annotation {tp!r}")
    raise ConfigError(f"{name}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _from_dict(cls: type[T], data: Any, prefix: str) -> T:
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{dotted}: unknown field; {where} accepts {', '.join(sorted(known))}")
    kwargs = {}
    for name, f in known.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                kwargs[name] = _from_dict(hints[name], {}, dotted)
            else:
                raise ConfigError(f"{dotted}: required field is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)
    return obj


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section; cannot set {dotted}")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{item}: overrides look like section.field=value (for example optim.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r} as YAML ({e.__class__.__name__})") from None
    return key, value


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) and ``section.field=value`` overrides applied in order."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {str(path)!r}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"--config: {path} must hold a mapping of sections, got {type(tree).__name__}")
    for item in overrides:
        _set_dotted(tree, *parse_override(item))
    return _from_dict(cls, tree, "")


def config_from_dict(cls: type[T], data: dict) -> T:
    """The inverse of ``config_to_dict`` (used to read the resolved config back from a checkpoint)."""
    return _from_dict(cls, data, "")


def config_to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------- the training config


def _positive(prefix: str, obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{prefix}.{name}: must be {bound}, got {value}")


@dataclass
class ModelSection:
    preset: str = "phi-tiny"  # megaphi.model.get_preset name
    overrides: dict[str, Any] = field(default_factory=dict)  # PhiConfig fields that differ from the preset


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
        _positive(prefix, self, "seq_len")
        _positive(prefix, self, "num_workers", allow_zero=True)
        self.paths = [str(p) for p in self.paths]  # an unquoted weight in YAML is a number

    def check_paths_exist(self) -> None:
        from megaphi.data.builder import parse_data_paths
        from megaphi.data.gpt_dataset import DatasetConfigError
        from megaphi.data.indexed import IndexedDataset, IndexedDatasetError

        if not self.paths:
            raise ConfigError("data.paths: give at least one dataset prefix (the path of a .bin/.idx pair without "
                              "the extension)")
        try:
            prefixes = [p for _, p in parse_data_paths(self.paths)]
        except DatasetConfigError as e:
            raise ConfigError(f"data.paths: {e}") from None
        for p in prefixes:
            missing = [p + s for s in (".bin", ".idx") if not Path(p + s).is_file()]
            if missing:
                raise ConfigError(f"data.paths: no indexed dataset at {p!r} ({' and '.join(missing)} not found); "
                                  "build it with python -m data_tools.preprocess or fix the prefix")
            try:
                IndexedDataset(p)  # reads and checks the index header and sizes: cheap, and before any process starts
            except IndexedDatasetError as e:
                raise ConfigError(f"data.paths: {e}") from None
        if self.tokenizer is not None and not Path(self.tokenizer).is_dir():
            raise ConfigError(f"data.tokenizer: {self.tokenizer!r} is not a directory; give a tokenizer directory "
                              "or null")

    def check_token_ids(self, vocab_size: int) -> None:
        """Every token id of every dataset below the model's vocab_size: an id past the embedding table would
        crash the step (or, on some kernels, read garbage). One pass over the memory-mapped tokens."""
        from megaphi.data.builder import parse_data_paths
        from megaphi.data.indexed import IndexedDataset, IndexedDatasetError

        for _, prefix in parse_data_paths(self.paths):
            try:
                IndexedDataset(prefix).check_vocab(vocab_size)
            except IndexedDatasetError as e:
                raise ConfigError(f"data.paths: {e}") from None


@dataclass
class OptimSection:
    lr: float = 1e-3
    min_lr: float = 0.0  # where the decay ends
    warmup_steps: int = 0
    decay: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = 0.1  # not applied to biases and LayerNorm
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    backend: Literal["auto", "torch", "apex"] = "auto"  # apex's FusedAdam on GPU where installed, else torch AdamW

    def check(self, prefix: str) -> None:
        _positive(prefix, self, "lr")
        _positive(prefix, self, "min_lr", "warmup_steps", "weight_decay", "grad_clip", "eps", allow_zero=True)
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
        _positive(prefix, self, "steps", "global_batch_size", "micro_batch_size", "gradient_accumulation_steps",
                  "tensor_parallel_size", "loss_scale_window", "loss_scale_hysteresis", "min_loss_scale",
                  "max_steps_at_min_loss_scale", "peak_tflops")


@dataclass
class CheckpointSection:
    dir: str | None = None  # default: <run_dir>/checkpoints
    interval: int = 1000  # steps between saves; the last step is always saved
    keep_last: int = 3  # older checkpoints are deleted; 0 keeps all
    init_from: str | None = None  # model checkpoint to start from (finetuning); ignored on resume

    def check(self, prefix: str) -> None:
        _positive(prefix, self, "interval")
        _positive(prefix, self, "keep_last", allow_zero=True)


@dataclass
class LoggingSection:
    interval: int = 10  # steps between console lines and host synchronisations
    tensorboard: bool = True
    plot: bool = True  # loss-curve PNG at the end

    def check(self, prefix: str) -> None:
        _positive(prefix, self, "interval")


@dataclass
class EvalSection:
    interval: int = 1000  # steps between validation passes; 0 disables
    batches: int = 10  # micro batches per rank per validation pass

    def check(self, prefix: str) -> None:
        _positive(prefix, self, "interval", allow_zero=True)
        _positive(prefix, self, "batches")


@dataclass
class DebugSection:
    """Fault injection, to prove the overflow and divergence handling on demand."""

    inf_grad_steps: list[int] = field(default_factory=list)  # make a gradient inf at these steps
    nan_loss_steps: list[int] = field(default_factory=list)  # make the loss NaN at these steps


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
    debug: DebugSection = field(default_factory=DebugSection)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.run_dir) / "checkpoints"

    def check(self, prefix: str) -> None:
        if self.optim.warmup_steps > self.train.steps:
            raise ConfigError(
                f"optim.warmup_steps: {self.optim.warmup_steps} exceeds train.steps {self.train.steps}"
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
