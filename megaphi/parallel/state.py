"""Tensor x data parallel process groups, and the ``mpu`` object DeepSpeed reads them through.

Ranks are laid out tensor-parallel-major: with TP=2 over 4 ranks the tensor-parallel groups are
{0,1}, {2,3} and the data-parallel groups {0,2}, {1,3}, so a TP group shares the fastest links
(one node) as in Megatron-LM. Before ``initialize`` (a notebook, a single-process test) the model
runs unsharded: the tensor-parallel size is 1 and the data-parallel size is torch.distributed's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class _Groups:
    tensor_parallel_group: dist.ProcessGroup
    tensor_parallel_ranks: tuple[int, ...]
    data_parallel_group: dist.ProcessGroup
    data_parallel_ranks: tuple[int, ...]


_groups: _Groups | None = None


def initialize(tensor_parallel_size: int) -> None:
    """Build the TP x DP groups; every rank must call this with the same size after init_process_group."""
    global _groups
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("megaphi.parallel.initialize needs torch.distributed.init_process_group() first")
    if _groups is not None:
        raise RuntimeError("megaphi.parallel is already initialized; call megaphi.parallel.destroy() first")
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if tensor_parallel_size < 1 or world_size % tensor_parallel_size != 0:
        raise ValueError(
            f"tensor_parallel_size={tensor_parallel_size} must be >= 1 and divide the world size "
            f"{world_size}; choose a divisor of the number of processes"
        )
    data_parallel_size = world_size // tensor_parallel_size
    tp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    tp_ranks: tuple[int, ...] = ()
    dp_ranks: tuple[int, ...] = ()
    # new_group is collective over the whole world: every rank creates every group, in the same order.
    for start in range(0, world_size, tensor_parallel_size):
        ranks = tuple(range(start, start + tensor_parallel_size))
        group = dist.new_group(list(ranks))
        if rank in ranks:
            tp_group, tp_ranks = group, ranks
    for offset in range(tensor_parallel_size):
        ranks = tuple(range(offset, world_size, tensor_parallel_size))
        group = dist.new_group(list(ranks))
        if rank in ranks:
            dp_group, dp_ranks = group, ranks
    assert tp_group is not None and dp_group is not None and len(dp_ranks) == data_parallel_size
    _groups = _Groups(tp_group, tp_ranks, dp_group, dp_ranks)


def destroy() -> None:
    """Forget the groups (tests, or re-initialising with another TP size)."""
    global _groups
    if _groups is not None and dist.is_initialized():
        for group in {_groups.tensor_parallel_group, _groups.data_parallel_group}:
            dist.destroy_process_group(group)
    _groups = None


def is_initialized() -> bool:
    return _groups is not None


def _require_groups() -> _Groups:
    if _groups is None:
        raise RuntimeError(
            "megaphi.parallel is not initialized; call megaphi.parallel.initialize(tp_size) "
            "after torch.distributed.init_process_group()"
        )
    return _groups


def get_tensor_parallel_group() -> dist.ProcessGroup:
    return _require_groups().tensor_parallel_group


def get_tensor_parallel_world_size() -> int:
    return 1 if _groups is None else len(_groups.tensor_parallel_ranks)


def get_tensor_parallel_rank() -> int:
    return 0 if _groups is None else _groups.tensor_parallel_ranks.index(dist.get_rank())


def get_tensor_parallel_src_rank() -> int:
    """Global rank of tensor-parallel rank 0 in this rank's group (the broadcast source)."""
    return _require_groups().tensor_parallel_ranks[0]


def get_data_parallel_group() -> dist.ProcessGroup:
    return _require_groups().data_parallel_group


def get_data_parallel_world_size() -> int:
    if _groups is not None:
        return len(_groups.data_parallel_ranks)
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_data_parallel_rank() -> int:
    if _groups is not None:
        return _groups.data_parallel_ranks.index(dist.get_rank())
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_data_parallel_group_ranks() -> list[int]:
    return list(_require_groups().data_parallel_ranks)


class _DeepSpeedMPU:
    """The model-parallel-unit interface DeepSpeed reads (engine, ZeRO-2, grad-norm, checkpoint naming).

    DeepSpeed uses both the old ``model_parallel`` and Megatron's ``tensor_model_parallel`` names.
    """

    get_model_parallel_group = staticmethod(get_tensor_parallel_group)
    get_model_parallel_world_size = staticmethod(get_tensor_parallel_world_size)
    get_model_parallel_rank = staticmethod(get_tensor_parallel_rank)
    get_tensor_model_parallel_group = staticmethod(get_tensor_parallel_group)
    get_tensor_model_parallel_world_size = staticmethod(get_tensor_parallel_world_size)
    get_tensor_model_parallel_rank = staticmethod(get_tensor_parallel_rank)
    get_tensor_model_parallel_src_rank = staticmethod(get_tensor_parallel_src_rank)
    get_data_parallel_group = staticmethod(get_data_parallel_group)
    get_data_parallel_world_size = staticmethod(get_data_parallel_world_size)
    get_data_parallel_rank = staticmethod(get_data_parallel_rank)
    get_data_parallel_group_ranks = staticmethod(get_data_parallel_group_ranks)


mpu = _DeepSpeedMPU()
