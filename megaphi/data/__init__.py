"""Training data: Megatron-compatible indexed datasets and the datasets built over them."""

from megaphi.data.indexed import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    best_dtype,
    merge_datasets,
)

__all__ = ["IndexedDataset", "IndexedDatasetError", "IndexedDatasetWriter", "best_dtype", "merge_datasets"]
