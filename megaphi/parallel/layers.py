"""Megatron-style tensor-parallel layers.

Weights are initialised as the full (unsharded) matrix drawn from the default generator and then
sliced, so a model built from one seed is the same network at every tensor-parallel size.
Sharded parameters carry ``tensor_model_parallel``, ``partition_dim`` and ``partition_stride`` (and,
over a padded vocabulary, ``partition_valid_size``): DeepSpeed counts them once per TP group in the
gradient norm, and the checkpoint converters read their whole layout from these attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from megaphi.vocab import padded_vocab_size  # noqa: F401  (re-exported)
from megaphi.parallel.collectives import (
    copy_to_tensor_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_from_tensor_parallel_region,
)
from megaphi.parallel.state import get_tensor_parallel_rank, get_tensor_parallel_world_size


def shard_tensor(full: torch.Tensor, dim: int, rank: int, world_size: int, stride: int = 1) -> torch.Tensor:
    """Rank ``rank``'s shard of ``full`` along ``dim``.

    With ``stride`` s the dimension is ``s`` stacked blocks (fused q/k/v: s=3) and each block is
    split separately, so rank r holds cat([block_0 part r, block_1 part r, ...]).
    """
    size = full.shape[dim]
    if size % (stride * world_size) != 0:
        raise ValueError(f"dimension {dim} of size {size} does not split into {stride} blocks x {world_size} ranks")
    blocks = full.chunk(stride, dim=dim)
    return torch.cat([block.chunk(world_size, dim=dim)[rank] for block in blocks], dim=dim)


def merge_shards(shards: list[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """Inverse of ``shard_tensor``: rebuild the full tensor from every rank's shard, in rank order."""
    per_rank_blocks = [shard.chunk(stride, dim=dim) for shard in shards]
    return torch.cat([torch.cat([blocks[b] for blocks in per_rank_blocks], dim=dim) for b in range(stride)], dim=dim)


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator != 0:
        raise ValueError(
            f"{what}={numerator} is not divisible by the tensor-parallel size {denominator}; "
            f"choose a tensor-parallel size that divides it"
        )
    return numerator // denominator


@dataclass(frozen=True)
class Partition:
    """How a sharded parameter is split over the tensor-parallel ranks (as ``mark_tensor_parallel`` declared it)."""

    dim: int
    stride: int = 1
    valid_size: int | None = None  # entries of the full ``dim`` past it are padding (the padded vocabulary)


def mark_tensor_parallel(
    param: nn.Parameter, partition_dim: int, partition_stride: int = 1, valid_size: int | None = None
) -> None:
    """Declare how ``param`` is split over tensor-parallel ranks; ``valid_size``: entries of the full
    ``partition_dim`` past it are padding (the padded vocabulary)."""
    # Plain attributes under Megatron's names, because DeepSpeed reads ``tensor_model_parallel`` itself.
    setattr(param, "tensor_model_parallel", True)  # noqa: B010
    setattr(param, "partition_dim", partition_dim)  # noqa: B010
    setattr(param, "partition_stride", partition_stride)  # noqa: B010
    setattr(param, "partition_valid_size", valid_size)  # noqa: B010


def partition_of(param: torch.Tensor) -> Partition | None:
    """The split ``mark_tensor_parallel`` declared for ``param``; None for a replicated parameter."""
    if not getattr(param, "tensor_model_parallel", False):
        return None
    return Partition(param.partition_dim, param.partition_stride, getattr(param, "partition_valid_size", None))  # type: ignore[attr-defined]  # set by mark_tensor_parallel


def _sharded_normal(
    shape: tuple[int, int], std: float, partition_dim: int, stride: int, valid_rows: int | None = None
) -> torch.Tensor:
    """Draw the full [out, in] matrix, zero rows past ``valid_rows`` (vocab padding), take this rank's shard."""
    rows = shape[0] if valid_rows is None else valid_rows
    full = torch.empty((rows, shape[1])).normal_(mean=0.0, std=std)
    if rows != shape[0]:
        full = torch.cat([full, full.new_zeros(shape[0] - rows, shape[1])])
    return shard_tensor(full, partition_dim, get_tensor_parallel_rank(), get_tensor_parallel_world_size(), stride)


class ColumnParallelLinear(nn.Module):
    """y = x A^T + b with A split by rows (output features) over tensor-parallel ranks.

    ``input_is_copied``: the caller already applied ``copy_to_tensor_parallel_region`` (a block that
    feeds one LayerNorm output to several column-parallel layers all-reduces its gradient once).
    ``gather_output``: return the full output instead of this rank's columns.
    ``valid_out_features``: rows past it are padding (the padded vocabulary) and start at zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        gather_output: bool = False,
        input_is_copied: bool = False,
        init_std: float = 0.02,
        partition_stride: int = 1,
        valid_out_features: int | None = None,
    ) -> None:
        super().__init__()
        world_size = get_tensor_parallel_world_size()
        self.in_features, self.out_features = in_features, out_features
        self.out_features_per_partition = divide(out_features, world_size, "out_features")
        self.gather_output, self.input_is_copied = gather_output, input_is_copied
        self.weight = nn.Parameter(
            _sharded_normal((out_features, in_features), init_std, 0, partition_stride, valid_out_features)
        )
        mark_tensor_parallel(self.weight, 0, partition_stride, valid_out_features)
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features_per_partition))
            mark_tensor_parallel(self.bias, 0, partition_stride, valid_out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_copied:
            x = copy_to_tensor_parallel_region(x)
        y = F.linear(x, self.weight, self.bias)
        return gather_from_tensor_parallel_region(y) if self.gather_output else y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, out_per_rank={self.out_features_per_partition}"


class RowParallelLinear(nn.Module):
    """y = x A^T + b with A split by columns (input features); the input arrives already split.

    Each rank computes a partial product, one all-reduce sums them, then the replicated bias is added
    once (it is not sharded, so it has no ``tensor_model_parallel`` flag).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, init_std: float = 0.02) -> None:
        super().__init__()
        world_size = get_tensor_parallel_world_size()
        self.in_features, self.out_features = in_features, out_features
        self.in_features_per_partition = divide(in_features, world_size, "in_features")
        self.weight = nn.Parameter(_sharded_normal((out_features, in_features), init_std, 1, 1))
        mark_tensor_parallel(self.weight, 1)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_from_tensor_parallel_region(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, in_per_rank={self.in_features_per_partition}, out={self.out_features}"


class VocabParallelEmbedding(nn.Module):
    """Token embedding with the (padded) vocabulary split into contiguous ranges over TP ranks.

    Each rank looks up the tokens in its range, zeroes the rest, and one all-reduce assembles the
    rows. Rows past ``vocab_size`` are padding and stay zero.
    """

    def __init__(self, vocab_size: int, padded_size: int, embedding_dim: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        world_size = get_tensor_parallel_world_size()
        self.vocab_size, self.padded_size, self.embedding_dim = vocab_size, padded_size, embedding_dim
        per_partition = divide(padded_size, world_size, "padded vocab size")
        self.vocab_start = get_tensor_parallel_rank() * per_partition
        self.vocab_end = self.vocab_start + per_partition
        self.weight = nn.Parameter(_sharded_normal((padded_size, embedding_dim), init_std, 0, 1, vocab_size))
        mark_tensor_parallel(self.weight, 0, valid_size=vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if get_tensor_parallel_world_size() == 1:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local_ids = (input_ids - self.vocab_start).masked_fill(outside, 0)
        embedded = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_parallel_region(embedded)

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size}, padded={self.padded_size}, range=[{self.vocab_start}, {self.vocab_end})"
