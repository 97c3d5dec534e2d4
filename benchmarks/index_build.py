"""Index-building time of megaphi's GPTDataset against megatron-core's, on the same indexed dataset.

    python benchmarks/index_build.py --documents 1000000 --seq-len 2048 --repeats 3

Builds a ``.idx`` describing ``--documents`` documents with log-normal lengths (a sparse ``.bin`` of
the matching size: index building reads only the lengths) and times, for one epoch and for several:

- construction of each ``GPTDataset`` with an empty cache directory (build + save: what a first run pays),
- construction again with the cache present (what every restart and every other rank pays),
- the index computation alone (document, sample and shuffle indices, no file I/O).

Both libraries get the same pre-opened indexed dataset; the best of ``--repeats`` interleaved runs
is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np

from megaphi.data import gpt_dataset as ours
from megaphi.data.indexed import IndexedDataset, _write_index, bin_path, idx_path

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets import gpt_dataset as megatron
    from megatron.core.datasets import helpers as megatron_helpers
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
    from megatron.core.datasets.utils import Split


class _Tokenizer:
    """The attributes megatron-core's GPTDatasetConfig reads from a tokenizer."""

    vocab_size, eod, pad = 51200, 50256, -1
    unique_identifiers = {"class": "BenchmarkTokenizer"}


def write_sparse_dataset(prefix: str, num_documents: int, median_tokens: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_tokens), 1.0, num_documents), 1, 200_000).astype(np.int32)
    dtype = np.dtype(np.uint16)
    _write_index(idx_path(prefix), dtype, lengths, np.arange(num_documents + 1, dtype=np.int64))
    with open(bin_path(prefix), "wb") as f:
        f.truncate(int(lengths.sum(dtype=np.int64)) * dtype.itemsize)
    return lengths


def race(
    repeats: int,
    theirs: Callable[[], object],
    mine: Callable[[], object],
    setup_theirs: Callable[[], object] = lambda: None,
    setup_mine: Callable[[], object] = lambda: None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best (wall, CPU) seconds of each, alternating which runs first so that load from other
    processes on a shared machine hits both alike. CPU time (user + system of this process) is the
    steadier number when the machine is busy."""
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        order = ((0, theirs, setup_theirs), (1, mine, setup_mine))
        for slot, fn, setup in order if r % 2 == 0 else order[::-1]:
            setup()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[slot].append(time.perf_counter() - start)
            cpu[slot].append(time.process_time() - start_cpu)
    return (min(wall[0]), min(cpu[0])), (min(wall[1]), min(cpu[1]))


def megatron_config(seq_len: int, seed: int, cache: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return megatron.GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq_len,
            tokenizer=_Tokenizer(),
            split="1,0,0",
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            path_to_cache=cache,
        )


def megatron_indices_only(indexed: Any, num_docs: int, seq_len: int, seed: int, num_epochs: int) -> None:
    """megatron-core's index computation as GPTDataset runs it (its C++ sample-index helper)."""
    rng = np.random.RandomState(seed)
    tokens_per_epoch = int(indexed.sequence_lengths.sum())
    document_index = megatron._build_document_index(np.arange(num_docs, dtype=np.int32), num_epochs, rng, False)
    sample_index = megatron_helpers.build_sample_idx(
        indexed.sequence_lengths.copy(), document_index, seq_len, num_epochs, tokens_per_epoch, True, True
    )
    megatron._build_shuffle_index(sample_index.shape[0] - 1, sample_index.shape[0] - 1, rng)


def megaphi_indices_only(indexed: IndexedDataset, num_docs: int, seq_len: int, seed: int, num_epochs: int) -> None:
    rng = np.random.RandomState(seed)
    tokens_per_epoch = int(indexed.sequence_lengths.sum(dtype=np.int64))
    document_index = ours.build_document_index(np.arange(num_docs, dtype=np.int32), num_epochs, rng)
    sample_index = ours.build_sample_index(indexed.sequence_lengths, document_index, num_epochs, seq_len)
    ours.build_shuffle_index(len(sample_index) - 1, tokens_per_epoch, num_epochs, seq_len, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--median-tokens", type=int, default=400, help="median document length (log-normal, sigma 1)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 4], help="epochs of the stream to index")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="index-build-")
    prefix = os.path.join(workdir, "corpus")
    lengths = write_sparse_dataset(prefix, args.documents, args.median_tokens, args.seed)
    tokens = int(lengths.sum(dtype=np.int64))
    print(f"# {date.today()} {platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} CPUs")
    print(f"# {args.documents} documents, {tokens} tokens (mean {tokens / args.documents:.0f}), seq_len {args.seq_len}")
    print("| epochs | samples | step | megatron-core wall / CPU (s) | megaphi wall / CPU (s) | speed-up (CPU) |")
    print("|---|---|---|---|---|---|")

    megaphi_indexed = IndexedDataset(prefix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        megatron_indexed = MegatronIndexedDataset(prefix)
    documents = np.arange(args.documents, dtype=np.int32)
    for epochs in args.epochs:
        # every sample of ``epochs`` passes: both libraries build ``epochs`` epochs, and megatron-core
        # shuffles them together (its last epoch is over 80% used) as in megatron_indices_only
        num_samples = None if epochs == 1 else (epochs * tokens - 1) // args.seq_len
        ours_cache, theirs_cache = os.path.join(workdir, "megaphi-cache"), os.path.join(workdir, "megatron-cache")

        def build_megatron() -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return megatron.GPTDataset(
                    megatron_indexed,
                    prefix,
                    documents,
                    num_samples,
                    Split.train,
                    megatron_config(args.seq_len, args.seed, theirs_cache),
                )

        def build_megaphi() -> ours.GPTDataset:
            return ours.GPTDataset(
                megaphi_indexed, seq_len=args.seq_len, seed=args.seed, num_samples=num_samples, cache_dir=ours_cache
            )

        cold = race(
            args.repeats,
            build_megatron,
            build_megaphi,
            lambda: shutil.rmtree(theirs_cache, ignore_errors=True),
            lambda: shutil.rmtree(ours_cache, ignore_errors=True),
        )
        warm = race(args.repeats, build_megatron, build_megaphi)
        ds = build_megaphi()
        assert ds.cache_status == "loaded" and ds.num_epochs == epochs, (ds.cache_status, ds.num_epochs)
        compute = race(
            args.repeats,
            lambda: megatron_indices_only(megatron_indexed, args.documents, args.seq_len, args.seed, epochs),
            lambda: megaphi_indices_only(megaphi_indexed, args.documents, args.seq_len, args.seed, epochs),
        )
        for step, (theirs, mine) in (
            ("first build (empty cache)", cold),
            ("load from cache", warm),
            ("index computation only", compute),
        ):
            speedup = f"{theirs[1] / mine[1]:.2f}x" if mine[1] > 0 else "n/a"
            print(
                f"| {epochs} | {len(ds)} | {step} | {theirs[0]:.3f} / {theirs[1]:.3f} | {mine[0]:.3f} / {mine[1]:.3f} "
                f"| {speedup} |",
                flush=True,
            )
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
