"""The tensor layout of a megaphi checkpoint and how it splits over tensor-parallel ranks.

A "full" state dict is the model with tensor parallel size 1 and the vocabulary *unpadded*
(``vocab_size`` rows): the common ground between Hugging Face checkpoints and megaphi shards.
``split_state_dict`` turns it into per-rank shards (vocabulary padded to a multiple of
``make_vocab_size_divisible_by * tp`` with zero rows) and ``merge_state_dicts`` undoes that.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch

from megaphi.common.checkpoints import CheckpointError
from megaphi.parallel.layers import merge_shards, partition_of, shard_tensor
from megaphi.vocab import padded_vocab_size

if TYPE_CHECKING:
    from megaphi.model import PhiConfig

StateDict = dict[str, torch.Tensor]

# How a parameter is laid out over tensor-parallel ranks (Megatron's conventions), as param_specs
# reads it from the parameter's own attributes.
REPLICATED = "replicated"  # every rank holds the whole tensor (LayerNorms, row-parallel biases)
COLUMN = "column"  # output rows split over ranks: weight dim 0, bias dim 0
ROW = "row"  # input columns split over ranks: weight dim 1
QKV = "qkv"  # fused [q; k; v] rows; each rank holds [q of its heads; k of its heads; v of its heads]
VOCAB = "vocab"  # rows over the padded vocabulary, split on dim 0


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]  # full shape: TP=1, vocabulary unpadded
    split: str
    dim: int = 0  # the dimension split over ranks (the parameter's partition_dim)
    stride: int = 1  # blocks split separately along it (partition_stride: 3 for fused q/k/v)


def config_padded_vocab_size(config: "PhiConfig", tp: int) -> int:
    """The padded vocabulary of a model config at tensor parallel size ``tp`` (embedding rows)."""
    return padded_vocab_size(config.vocab_size, config.make_vocab_size_divisible_by, tp)


def check_divisible(config: "PhiConfig", tp: int) -> None:
    """Raise CheckpointError naming the first config field that cannot be split over ``tp`` ranks.

    The vocabulary never needs to divide: it is padded to a multiple of make_vocab_size_divisible_by * tp.
    """
    if tp < 1:
        raise CheckpointError(f"tensor_parallel_size must be >= 1, got {tp}")
    for field in ("num_attention_heads", "intermediate_size"):
        value = getattr(config, field)
        if value % tp:
            raise CheckpointError(
                f"{field} {value} is not divisible by tensor_parallel_size {tp}: choose a tensor parallel size "
                f"that divides it"
            )


def param_specs(config: "PhiConfig") -> list[ParamSpec]:
    """Every tensor of a megaphi state dict, in module order, with its full shape and split.

    Read from the model itself (built on the meta device: no memory, no weights): each parameter's
    tensor-parallel attributes, as :mod:`megaphi.parallel.layers` declares them, say how it splits.
    The model's layers are the one statement of the layout; conversion and resharding follow it.
    """
    # the attention backend shapes no parameter, and "flash" could not be built where flash-attn is missing
    return list(_param_specs(json.dumps(dict(config.to_dict(), attn_backend="sdpa"), sort_keys=True)))


@functools.lru_cache(maxsize=16)
def _param_specs(config_json: str) -> tuple[ParamSpec, ...]:
    from megaphi.model import PhiConfig, PhiForCausalLM
    from megaphi.parallel import get_tensor_parallel_world_size

    config = PhiConfig.from_dict(json.loads(config_json))
    tp = get_tensor_parallel_world_size()  # >1 inside a tensor-parallel job: shapes are then this rank's
    with torch.device("meta"):
        model = PhiForCausalLM(config)
    specs = []
    for name, param in model.named_parameters():
        shape = list(param.shape)
        partition = partition_of(param)
        if partition is None:
            specs.append(ParamSpec(name, tuple(shape), REPLICATED, dim=-1))
            continue
        dim, stride, valid = partition.dim, partition.stride, partition.valid_size
        shape[dim] *= tp
        if valid is not None:
            if (dim, stride) != (0, 1):
                raise NotImplementedError(f"{name}: padding is supported on unstrided rows only")
            shape[0], split = valid, VOCAB
        elif stride == 3 and dim == 0:
            split = QKV
        elif stride == 1:
            split = COLUMN if dim == 0 else ROW
        else:
            raise NotImplementedError(f"{name}: no conversion for partition_dim {dim} with stride {stride}")
        specs.append(ParamSpec(name, tuple(shape), split, dim=dim, stride=stride))
    return tuple(specs)


def shard_shape(spec: ParamSpec, config: "PhiConfig", tp: int) -> tuple[int, ...]:
    shape = list(spec.shape)
    if spec.split == VOCAB:
        shape[0] = config_padded_vocab_size(config, tp) // tp
    elif spec.split != REPLICATED:
        shape[spec.dim] //= tp
    return tuple(shape)


def _fmt(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_state_dict(state_dict: StateDict, expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Exactly the expected keys with the expected shapes, or one CheckpointError naming the first culprit."""
    missing = [k for k in expected if k not in state_dict]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where} is missing key '{missing[0]}'{more}: the checkpoint does not match its config")
    extra = [k for k in state_dict if k not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{where} has unexpected key '{extra[0]}'{more}: the checkpoint does not match its config"
        )
    for key, shape in expected.items():
        actual = tuple(state_dict[key].shape)
        if actual != shape:
            raise CheckpointError(
                f"{where}: key '{key}' has shape {_fmt(actual)}, expected {_fmt(shape)} from the config"
            )


def check_full_state_dict(state_dict: StateDict, config: "PhiConfig", where: str) -> None:
    check_state_dict(state_dict, {s.name: s.shape for s in param_specs(config)}, where)


def check_shards(shards: list[StateDict], config: "PhiConfig", where: str) -> None:
    tp = len(shards)
    check_divisible(config, tp)
    expected = {s.name: shard_shape(s, config, tp) for s in param_specs(config)}
    for rank, shard in enumerate(shards):
        check_state_dict(shard, expected, f"{where} (tensor parallel rank {rank} of {tp})")


def _split(spec: ParamSpec, tensor: torch.Tensor, config: "PhiConfig", tp: int) -> list[torch.Tensor]:
    if spec.split == REPLICATED:
        return [tensor] * tp
    if spec.split == VOCAB:  # zero rows up to the padded size, which divides evenly by tp
        pad = config_padded_vocab_size(config, tp) - tensor.shape[0]
        tensor = torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))], dim=0)
    elif tp == 1:
        return [tensor]
    return [shard_tensor(tensor, spec.dim, rank, tp, spec.stride) for rank in range(tp)]


def split_state_dict(full: StateDict, config: "PhiConfig", tp: int) -> list[StateDict]:
    """Full (TP=1, unpadded) state dict -> one state dict per tensor-parallel rank."""
    check_divisible(config, tp)
    check_full_state_dict(full, config, "state dict to split")
    shards: list[StateDict] = [{} for _ in range(tp)]
    for spec in param_specs(config):
        for rank, piece in enumerate(_split(spec, full[spec.name], config, tp)):
            shards[rank][spec.name] = piece
    return shards


def _merge(spec: ParamSpec, pieces: list[torch.Tensor], config: "PhiConfig") -> torch.Tensor:
    if spec.split == REPLICATED:
        return pieces[0]
    merged = pieces[0] if len(pieces) == 1 else merge_shards(pieces, spec.dim, spec.stride)
    if spec.split == VOCAB:
        return merged[: config.vocab_size].clone()  # drop the padding rows; clone so it owns compact storage
    return merged


def merge_state_dicts(shards: list[StateDict], config: "PhiConfig", where: str = "checkpoint") -> StateDict:
    """Per-rank state dicts -> the full (TP=1, unpadded) state dict."""
    check_shards(shards, config, where)
    return {spec.name: _merge(spec, [s[spec.name] for s in shards], config) for spec in param_specs(config)}


def reshard(shards: list[StateDict], config: "PhiConfig", tp: int, where: str = "checkpoint") -> list[StateDict]:
    """Per-rank state dicts for one tensor parallel size -> for ``tp`` (exact: tensors are only moved)."""
    check_divisible(config, tp)
    return split_state_dict(merge_state_dicts(shards, config, where), config, tp)
