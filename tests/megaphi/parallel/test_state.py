"""Tensor x data parallel groups and the mpu interface DeepSpeed reads."""

import pytest
import torch
import torch.distributed as dist

from megaphi import parallel
from tests.distributed import spawn


def test_without_groups_the_model_runs_unsharded():
    assert not parallel.is_initialized()
    assert parallel.get_tensor_parallel_world_size() == 1 and parallel.get_tensor_parallel_rank() == 0
    assert parallel.get_data_parallel_world_size() == 1 and parallel.get_data_parallel_rank() == 0
    with pytest.raises(RuntimeError, match="init_process_group"):
        parallel.initialize(1)
    with pytest.raises(RuntimeError, match="not initialized"):
        parallel.get_tensor_parallel_group()


def _members(group) -> list[int]:
    ranks = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size(group))]
    dist.all_gather(ranks, torch.tensor([dist.get_rank()]), group=group)
    return [int(r) for r in ranks]


def _grid(rank: int, world_size: int) -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size=3 must be >= 1 and divide the world size 4"):
        parallel.initialize(3)
    parallel.initialize(2)
    with pytest.raises(RuntimeError, match="already initialized"):
        parallel.initialize(2)
    tp_peers = [rank - rank % 2, rank - rank % 2 + 1]
    dp_peers = [rank % 2, rank % 2 + 2]
    assert _members(parallel.get_tensor_parallel_group()) == tp_peers
    assert _members(parallel.get_data_parallel_group()) == dp_peers
    assert parallel.get_tensor_parallel_rank() == rank % 2 and parallel.get_data_parallel_rank() == rank // 2
    mpu = parallel.mpu
    assert mpu.get_model_parallel_world_size() == mpu.get_tensor_model_parallel_world_size() == 2
    assert mpu.get_model_parallel_rank() == rank % 2
    assert mpu.get_data_parallel_world_size() == 2 and mpu.get_data_parallel_rank() == rank // 2
    assert mpu.get_model_parallel_group() is parallel.get_tensor_parallel_group()
    assert mpu.get_data_parallel_group() is parallel.get_data_parallel_group()
    assert mpu.get_tensor_model_parallel_src_rank() == tp_peers[0]
    parallel.destroy()
    assert not parallel.is_initialized()


@pytest.mark.slow
def test_four_ranks_at_tp2_form_contiguous_tensor_groups_and_strided_data_groups():
    spawn(_grid, 4)
