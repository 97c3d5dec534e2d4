"""Train/validation datasets from indexed data: split, blend, pack (Megatron's ``--data-path`` and
``--split`` semantics).

    train_ds, valid_ds = build_train_valid_datasets(
        ["0.7", "data/textbooks_text_document", "0.3", "data/exercises_text_document"],
        seq_len=2048, seed=1234, train_samples=steps * global_batch,
        valid_samples=evals * eval_iters * global_batch, split="969,30,1")

Each dataset's documents are split into contiguous train/valid/test ranges (the test range is held
out and not built); each range is packed into a :class:`GPTDataset`, and several datasets are mixed
by :class:`BlendedDataset` with exact per-dataset sample counts. Collective under torch.distributed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from typing import Optional, Sequence, Union

from megaphi.common.cli import entry_point
from megaphi.data.blended import BlendedDataset, blend_counts, normalize_weights
from megaphi.data.gpt_dataset import DatasetConfigError, GPTDataset
from megaphi.data.indexed import IndexedDataset

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")


# Megatron's --data-path forms, as parse_data_paths reads them.
DataPaths = Union[
    str, "os.PathLike[str]", Sequence[Union[str, float, "os.PathLike[str]"]], Sequence[tuple[Optional[float], str]]
]


def parse_data_paths(data_paths: DataPaths) -> list[tuple[float | None, str]]:
    """Normalise Megatron's ``--data-path`` forms to ``[(weight or None, prefix), ...]``.

    Accepted: ``"prefix"``; ``["p1", "p2"]`` (weights None: blended by size);
    ``["0.7", "p1", "0.3", "p2"]`` (a weight may be a number); ``[(0.7, "p1"), (0.3, "p2")]``; and
    this function's output.
    """
    if isinstance(data_paths, (str, os.PathLike)):
        return [(None, os.fspath(data_paths))]
    items = list(data_paths)
    if not items:
        raise DatasetConfigError(
            "no data paths given; pass at least one indexed dataset prefix (path without .bin/.idx)"
        )
    pairs = [item for item in items if isinstance(item, (tuple, list))]
    if pairs:
        if len(pairs) != len(items) or any(len(pair) != 2 for pair in pairs):
            raise DatasetConfigError(
                f"cannot read data paths {items}: give (weight, prefix) pairs only, or a flat list of them"
            )
        weights = [w for w, _ in pairs if w is not None]
        if not weights:  # this function's own output: unweighted prefixes
            return [(None, os.fspath(p)) for _, p in pairs]
        if len(weights) != len(pairs):
            raise DatasetConfigError(f"cannot read data paths {items}: give every prefix a weight, or none")
        return _checked([(float(w), os.fspath(p)) for w, (_, p) in zip(weights, pairs)])
    flat = [os.fspath(item) if isinstance(item, os.PathLike) else str(item) for item in items]
    if len(flat) % 2 == 0 and all(_is_number(w) for w in flat[0::2]):
        return _checked([(float(w), p) for w, p in zip(flat[0::2], flat[1::2])])
    if any(_is_number(item) for item in flat):
        raise DatasetConfigError(
            f'cannot read data paths {flat}: give prefixes only, or alternating weight and prefix ("0.7 a 0.3 b")'
        )
    return [(None, item) for item in flat]


def _checked(weighted: list[tuple[float, str]]) -> list[tuple[float | None, str]]:
    normalize_weights([w for w, _ in weighted])  # raises for negative, infinite or all-zero weights
    return [(w, p) for w, p in weighted]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_split(split: str, num_documents: int) -> list[tuple[int, int]]:
    """Document ranges ``[(begin, end)] * 3`` for train, valid and test.

    ``split`` is either weights, ``"969,30,1"`` (normalised; split points rounded as Megatron does:
    ``round(cumulative_fraction * num_documents)``), or explicit ranges, ``"0:9000,9000:9900"``
    (an empty end means the last document; missing splits are empty). Ranges must not overlap.
    """
    parts = [p.strip() for p in re.split(r"[,/]", split) if p.strip()]
    if not parts or len(parts) > 3:
        raise DatasetConfigError(f'split {split!r} must have one to three parts (train, valid, test), e.g. "969,30,1"')
    if any(":" in p for p in parts):
        ranges = [_parse_range(p, num_documents, split) for p in parts]
        ranges += [(num_documents, num_documents)] * (3 - len(ranges))
        ordered = sorted(r for r in ranges if r[1] > r[0])
        for (_, end), (begin, _) in zip(ordered, ordered[1:]):
            if begin < end:
                raise DatasetConfigError(
                    f"split {split!r} has overlapping document ranges; train and validation must be disjoint"
                )
        return ranges
    try:
        weights = normalize_weights([float(p) for p in parts] + [0.0] * (3 - len(parts)))
    except ValueError:
        raise DatasetConfigError(
            f'split {split!r} must be numbers like "969,30,1" or ranges like "0:9000,9000:9900"'
        ) from None
    bounds = [0.0, weights[0], weights[0] + weights[1], 1.0]
    points = [int(round(b * num_documents)) for b in bounds]
    return [(points[i], points[i + 1]) for i in range(3)]


def _parse_range(text: str, num_documents: int, split: str) -> tuple[int, int]:
    begin_text, sep, end_text = text.partition(":")
    try:
        begin = int(begin_text) if begin_text.strip() else 0
        end = int(end_text) if end_text.strip() else num_documents
    except ValueError:
        raise DatasetConfigError(f"split range {text!r} in {split!r} must be BEGIN:END document numbers") from None
    if not sep or not 0 <= begin <= end <= num_documents:
        raise DatasetConfigError(
            f"split range {text!r} in {split!r} is outside the dataset's {num_documents} documents"
        )
    return begin, end


def build_split_dataset(
    data_paths: DataPaths,
    split_name: str,
    *,
    seq_len: int,
    seed: int = 1234,
    num_samples: int | None = None,
    split: str = "969,30,1",
    cache_dir: str | os.PathLike | None = None,
) -> GPTDataset | BlendedDataset | None:
    """The ``split_name`` ("train", "valid" or "test") part of ``data_paths``, or None if it is empty.

    ``num_samples`` None means one epoch of every dataset (a blend then mixes them by size); 0 means
    none asked for (the result is None).
    """
    if split_name not in SPLIT_NAMES:
        raise DatasetConfigError(f"unknown split {split_name!r}; use one of {SPLIT_NAMES}")
    if num_samples == 0:
        return None  # nothing asked of this split (e.g. validation turned off)
    entries: list[tuple[float | None, IndexedDataset, tuple[int, int]]] = []  # (weight, indexed, documents)
    for weight, prefix in parse_data_paths(data_paths):
        indexed = IndexedDataset(prefix)
        begin, end = parse_split(split, len(indexed))[SPLIT_NAMES.index(split_name)]
        if begin == end:
            if split_name == "train":
                raise DatasetConfigError(
                    f"split {split!r} leaves no train documents in {prefix} ({len(indexed)} documents)"
                )
            logger.warning(
                "%s has no %s documents under split %r; it is skipped for %s", prefix, split_name, split, split_name
            )
            continue
        entries.append((weight, indexed, (begin, end)))
    if not entries:
        if num_samples:
            raise DatasetConfigError(
                f"{num_samples} {split_name} samples requested but split {split!r} leaves no {split_name} documents"
            )
        return None

    def gpt(indexed: IndexedDataset, documents: tuple[int, int], samples: int | None) -> GPTDataset:
        return GPTDataset(
            indexed,
            seq_len=seq_len,
            seed=seed,
            num_samples=samples,
            documents=documents,
            cache_dir=cache_dir,
            name=split_name,
        )

    if len(entries) == 1:
        _, indexed, documents = entries[0]
        return gpt(indexed, documents, num_samples)
    if num_samples is None:
        if any(weight is not None for weight, _, _ in entries):
            raise DatasetConfigError(
                "blend weights need a sample count to apply to (--train-samples / "
                "--valid-samples, or train.steps in training); give one, or drop the weights"
            )
        datasets = [gpt(indexed, documents, None) for _, indexed, documents in entries]
        sizes = [len(d) for d in datasets]
        return BlendedDataset(datasets, sizes, sum(sizes))
    weights = [weight for weight, _, _ in entries if weight is not None]
    if len(weights) < len(entries):  # unweighted prefixes blend in proportion to their tokens
        weights = [int(ix.sequence_lengths[b:e].sum(dtype="int64")) for _, ix, (b, e) in entries]
    counts = blend_counts(weights, num_samples)
    datasets = [gpt(indexed, documents, int(count)) for (_, indexed, documents), count in zip(entries, counts)]
    return BlendedDataset(datasets, weights, num_samples)


def build_train_valid_datasets(
    data_paths: DataPaths,
    *,
    seq_len: int,
    seed: int = 1234,
    train_samples: int | None = None,
    valid_samples: int | None = None,
    split: str = "969,30,1",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[GPTDataset | BlendedDataset, GPTDataset | BlendedDataset | None]:
    """(train, valid) datasets; valid is None when the split gives it no documents.

    ``train_samples`` should be ``train_steps * global_batch_size`` (None: one epoch);
    ``valid_samples`` the samples all evaluations draw (None: one pass over the validation data).
    Collective under torch.distributed: call it on every rank with the same arguments.
    """

    def split_dataset(name: str, num_samples: int | None) -> GPTDataset | BlendedDataset | None:
        return build_split_dataset(
            data_paths, name, seq_len=seq_len, seed=seed, num_samples=num_samples, split=split, cache_dir=cache_dir
        )

    train = split_dataset("train", train_samples)
    if train is None:
        raise DatasetConfigError("train_samples=0: ask for at least one train sample (or None for one epoch)")
    return train, split_dataset("valid", valid_samples)


def describe(dataset: object) -> str:
    """One line saying what a dataset of this module holds."""
    if dataset is None:
        return "none"
    if isinstance(dataset, BlendedDataset):
        parts = "; ".join(f"{count} from {describe(d)}" for count, d in zip(dataset.counts, dataset.datasets))
        return f"{len(dataset)} samples blended ({parts})"
    if not isinstance(dataset, GPTDataset):
        return repr(dataset)
    begin, end = dataset.documents
    return (
        f"{dataset.indexed.prefix} documents [{begin}, {end}): {dataset.tokens_per_epoch} tokens, "
        f"{dataset.num_epochs} epoch(s), {len(dataset)} samples, index {dataset.cache_status}"
    )


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megaphi.data.builder",
        description="Build (or check) the cached train/valid sample indices for a training run ahead of time, "
        "so the job starts without building them, and report what each split holds.",
    )
    parser.add_argument(
        "--data-path",
        nargs="+",
        required=True,
        help="indexed dataset prefixes, optionally weighted: PREFIX | W1 PREFIX1 W2 PREFIX2 ...",
    )
    parser.add_argument("--seq-len", type=int, required=True, help="model context length")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--split", default="969,30,1", help="weights (969,30,1) or document ranges (0:9000,9000:9900)")
    parser.add_argument(
        "--train-samples", type=int, default=None, help="train steps x global batch (default: one epoch)"
    )
    parser.add_argument("--valid-samples", type=int, default=None, help="default: one pass over the validation data")
    parser.add_argument("--cache-dir", default=None, help="default: index-cache/ next to each dataset")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    train, valid = build_train_valid_datasets(
        args.data_path,
        seq_len=args.seq_len,
        seed=args.seed,
        train_samples=args.train_samples,
        valid_samples=args.valid_samples,
        split=args.split,
        cache_dir=args.cache_dir,
    )
    print(f"train: {describe(train)}")
    print(f"valid: {describe(valid)}")
    print(f"ready in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
