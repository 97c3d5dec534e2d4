"""Autograd-aware collectives over the tensor-parallel group (Megatron-LM's "mappings").

Each forward collective has its adjoint as the backward: copy <-> reduce, scatter <-> gather.
All are the identity when the tensor-parallel size is 1, so the single-process model pays nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from megaphi.parallel.state import get_tensor_parallel_group, get_tensor_parallel_rank, get_tensor_parallel_world_size


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if get_tensor_parallel_world_size() == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, group=get_tensor_parallel_group())
    return x


def _split_last_dim(x: torch.Tensor) -> torch.Tensor:
    world_size = get_tensor_parallel_world_size()
    if world_size == 1:
        return x
    return x.chunk(world_size, dim=-1)[get_tensor_parallel_rank()].contiguous()


def _gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    world_size = get_tensor_parallel_world_size()
    if world_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x, group=get_tensor_parallel_group())
    return torch.cat(parts, dim=-1)


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Autograd may hand the same gradient buffer to several branches (x + attn + mlp), so
        # reduce a copy rather than the buffer in place.
        return _all_reduce(grad.clone())


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():
            return _all_reduce(x.contiguous())
        # The partial sums are a fresh GEMM output nobody else holds: reduce them in place.
        ctx.mark_dirty(x)
        return _all_reduce(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _split_last_dim(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _gather_last_dim(grad)


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _gather_last_dim(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _split_last_dim(grad)


def copy_to_tensor_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """Identity forward; all-reduce of the gradient (input of a column-parallel layer)."""
    return x if get_tensor_parallel_world_size() == 1 else _CopyToRegion.apply(x)


def reduce_from_tensor_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """All-reduce forward (partial sums of a row-parallel layer); identity gradient."""
    return x if get_tensor_parallel_world_size() == 1 else _ReduceFromRegion.apply(x)


def scatter_to_tensor_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """Keep this rank's slice of the last dim; gather the gradient."""
    return x if get_tensor_parallel_world_size() == 1 else _ScatterToRegion.apply(x)


def gather_from_tensor_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's slice along the last dim; split the gradient."""
    return x if get_tensor_parallel_world_size() == 1 else _GatherFromRegion.apply(x)
