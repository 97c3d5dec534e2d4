"""Megatron-style tensor parallelism: process groups, collectives, sharded layers, loss, RNG."""

from megaphi.parallel.collectives import (
    copy_to_tensor_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_from_tensor_parallel_region,
    scatter_to_tensor_parallel_region,
)
from megaphi.parallel.cross_entropy import fused_linear_cross_entropy, vocab_parallel_cross_entropy
from megaphi.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    merge_shards,
    padded_vocab_size,
    shard_tensor,
)
from megaphi.parallel.random import MODEL_PARALLEL_RNG, RNGStatesTracker, get_rng_tracker, seed_everything
from megaphi.parallel.state import (
    destroy,
    get_data_parallel_group,
    get_data_parallel_rank,
    get_data_parallel_world_size,
    get_tensor_parallel_group,
    get_tensor_parallel_rank,
    get_tensor_parallel_src_rank,
    get_tensor_parallel_world_size,
    initialize,
    is_initialized,
    mpu,
)

__all__ = [
    "initialize",
    "destroy",
    "is_initialized",
    "mpu",
    "get_tensor_parallel_group",
    "get_tensor_parallel_rank",
    "get_tensor_parallel_world_size",
    "get_tensor_parallel_src_rank",
    "get_data_parallel_group",
    "get_data_parallel_rank",
    "get_data_parallel_world_size",
    "copy_to_tensor_parallel_region",
    "reduce_from_tensor_parallel_region",
    "scatter_to_tensor_parallel_region",
    "gather_from_tensor_parallel_region",
    "ColumnParallelLinear",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "padded_vocab_size",
    "shard_tensor",
    "merge_shards",
    "vocab_parallel_cross_entropy",
    "fused_linear_cross_entropy",
    "RNGStatesTracker",
    "get_rng_tracker",
    "seed_everything",
    "MODEL_PARALLEL_RNG",
]
