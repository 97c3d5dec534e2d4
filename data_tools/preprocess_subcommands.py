"""The subcommands of ``python -m data_tools.preprocess`` over finished ``.bin/.idx`` datasets:
``merge`` concatenates several into one, ``stats`` writes the token statistics (``PREFIX.stats.json``)
of a dataset made by another tool, which the trainer then reads at start instead of the tokens.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from megaphi.data.indexed import IndexedDataset, IndexedDatasetError, merge_datasets, stats_path, write_token_stats


def merge(inputs: Sequence[str | os.PathLike], output_prefix: str | os.PathLike) -> IndexedDataset:
    """Concatenate indexed datasets named by prefix, or every ``.idx`` prefix in a directory, in order."""
    prefixes: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(str(p.with_suffix("")) for p in Path(item).glob("*.idx"))
            if not found:
                raise IndexedDatasetError(f"directory {item} holds no .idx files to merge")
            prefixes.extend(found)
        else:
            prefixes.append(item.removesuffix(".idx").removesuffix(".bin"))
    return merge_datasets(prefixes, output_prefix)


def merge_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.preprocess merge",
        description="Concatenate per-shard .bin/.idx datasets into one, in the order given.",
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="dataset prefixes (or their .idx/.bin), or directories of them"
    )
    parser.add_argument("--output-prefix", required=True, help="prefix of the merged .bin/.idx")
    args = parser.parse_args(argv)
    merged = merge(args.input, args.output_prefix)
    print(f"merged {merged!r}")
    return 0


def stats_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.preprocess stats",
        description="Scan datasets made by another tool once and write their token "
        "statistics (PREFIX.stats.json), which the trainer reads at start.",
    )
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes (or their .idx/.bin)")
    args = parser.parse_args(argv)
    for item in args.input:
        prefix = item.removesuffix(".idx").removesuffix(".bin")
        stats = IndexedDataset(prefix).scan_token_stats()
        write_token_stats(prefix, stats)
        print(f"wrote {stats_path(prefix)}: {stats.num_tokens} tokens, ids {stats.min_token_id}..{stats.max_token_id}")
    return 0
