"""Remove exact and near-duplicate documents from JSONL/parquet shards (phi-1 paper, section 5).

Exact duplicates share a hash of their whitespace-normalised text. Near duplicates are found with
MinHash signatures over word n-gram shingles and locality-sensitive hashing (``datasketch``): a
document whose estimated Jaccard similarity to an already kept one reaches ``--threshold`` is
dropped. The first occurrence in input order is always the one kept, so the output is a
deterministic function of the input order.

    python -m data_tools.dedup --input data/stdlib-*.jsonl --output-prefix data/dedup/stdlib
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from datasketch import LeanMinHash, MinHash, MinHashLSH
from megaphi.progress import progress as progress_display

from data_tools.jsonl import (
    ON_ERROR_CHOICES,
    JsonlShardWriter,
    OnError,
    ReadStats,
    expand_inputs,
    iter_records,
    record_id,
    record_text,
)
from megaphi.common.files import atomic_open, atomic_write_text
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError

WORD = re.compile(r"\w+")


class DedupError(UserError):
    """Inputs or parameters that deduplication cannot work with."""


def normalize(text: str) -> str:
    """Text with trailing spaces and blank lines removed: reformatting alone does not make a new file."""
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def shingles(text: str, ngram: int) -> list[bytes]:
    """Word n-grams of the text; a text shorter than ``ngram`` words is one shingle of all its words."""
    words = WORD.findall(text)
    if len(words) < ngram:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)]


def signature(text: str, num_perm: int, ngram: int, seed: int = 1) -> LeanMinHash:
    minhash = MinHash(num_perm=num_perm, seed=seed)
    minhash.update_batch(shingles(text, ngram))
    return LeanMinHash(minhash)


@dataclass(frozen=True)
class DedupParams:
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    text_key: str = "text"

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise DedupError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16:
            raise DedupError(f"--num-perm must be at least 16, got {self.num_perm}")
        if self.ngram < 1:
            raise DedupError(f"--ngram must be at least 1, got {self.ngram}")


@dataclass
class DedupStats:
    documents: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    read: ReadStats = field(default_factory=ReadStats)
    shards: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"read {self.documents} documents: kept {self.kept}, removed {self.exact_duplicates} exact and "
            f"{self.near_duplicates} near duplicates ({self.read.skipped} malformed records skipped)"
        )


class Deduplicator:
    """Streaming decisions: ``check(doc_id, text, sig)`` says whether a document is new and, if not,
    which kept document it duplicates. Kept documents are remembered; removed ones are not."""

    def __init__(self, params: DedupParams):
        params.validate()
        self.params = params
        self._exact: dict[bytes, str] = {}
        self._lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm)
        self._signatures: dict[str, LeanMinHash] = {}

    def check(self, doc_id: str, key: bytes, sig: LeanMinHash) -> dict[str, Any] | None:
        """None when the document is kept, else ``{"reason", "duplicate_of", "jaccard"}``."""
        if key in self._exact:
            return {"reason": "exact", "duplicate_of": self._exact[key], "jaccard": 1.0}
        best = None
        for other in self._lsh.query(sig):
            # LSH candidates can fall below the threshold: confirm with the signature estimate.
            jaccard = float(sig.jaccard(self._signatures[other]))
            if jaccard >= self.params.threshold and (best is None or jaccard > best[1]):
                best = (other, jaccard)
        if best is not None:
            return {"reason": "near", "duplicate_of": best[0], "jaccard": round(best[1], 4)}
        if doc_id in self._signatures:
            raise DedupError(f"document id {doc_id!r} occurs twice in the input; ids must be unique")
        self._exact[key] = doc_id
        self._lsh.insert(doc_id, sig)
        self._signatures[doc_id] = sig
        return None


def _fingerprint(args: tuple[str, int, int]) -> tuple[bytes, LeanMinHash]:
    text, num_perm, ngram = args
    return exact_key(text), signature(text, num_perm, ngram)


def _texts(records: Iterable[dict[str, Any]], text_key: str) -> Iterator[tuple[int, dict[str, Any], str]]:
    for index, record in enumerate(records):
        yield index, record, record_text(record, text_key, index)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def deduplicate(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    params: DedupParams = DedupParams(),
    *,
    workers: int = 1,
    on_error: OnError = "stop",
    progress: bool = True,
) -> DedupStats:
    """Write the kept records to ``{output_prefix}-NNNNN.jsonl``, every removed one with its reason to
    ``{output_prefix}.removed.jsonl`` and the counts to ``{output_prefix}.dedup.json``."""
    params.validate()
    files = expand_inputs(inputs)
    stats = DedupStats()
    dedup = Deduplicator(params)
    records = _texts(iter_records(files, on_error=on_error, stats=stats.read), params.text_key)
    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    pool = get_context("spawn").Pool(workers) if workers > 1 else None
    fingerprint_map = pool.map if pool else (lambda fn, items: list(map(fn, items)))
    try:
        with (
            JsonlShardWriter(prefix) as writer,
            atomic_open(f"{prefix}.removed.jsonl") as removed,
            progress_display(disable=not progress, desc="dedup", unit="docs") as bar,
        ):
            # Signatures are computed a chunk at a time (in parallel when asked); decisions stay in
            # input order so that the first occurrence is the one kept. Memory is bounded by a chunk.
            for chunk in _chunks(records, 4096):
                fingerprints = fingerprint_map(
                    _fingerprint, [(text, params.num_perm, params.ngram) for _, _, text in chunk]
                )
                for (index, record, _), (key, sig) in zip(chunk, fingerprints):
                    stats.documents += 1
                    doc_id = record_id(record, index)
                    decision = dedup.check(doc_id, key, sig)
                    if decision is None:
                        writer.write(record)
                        stats.kept += 1
                        continue
                    if decision["reason"] == "exact":
                        stats.exact_duplicates += 1
                    else:
                        stats.near_duplicates += 1
                    removed.write(json.dumps({"id": doc_id, **decision}) + "\n")
                bar.update(len(chunk))
            stats.shards = [str(p) for p in writer.paths]
    finally:
        if pool:
            pool.close()
            pool.join()
    if stats.documents == 0:
        raise DedupError(f"inputs {list(map(str, inputs))} hold no records: nothing to deduplicate")
    report = {
        **asdict(params),
        "documents": stats.documents,
        "kept": stats.kept,
        "exact_duplicates": stats.exact_duplicates,
        "near_duplicates": stats.near_duplicates,
        "malformed_skipped": stats.read.skipped,
        "shards": stats.shards,
    }
    atomic_write_text(f"{prefix}.dedup.json", json.dumps(report, indent=2) + "\n")
    return stats


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.dedup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", nargs="+", required=True, help="JSONL/parquet files, globs or directories")
    parser.add_argument("--output-prefix", required=True, help="kept shards go to PREFIX-NNNNN.jsonl")
    parser.add_argument("--text-key", default="text", help="record field holding the document text")
    parser.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity that makes a near duplicate")
    parser.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--ngram", type=int, default=5, help="words per shingle")
    parser.add_argument("--workers", type=int, default=1, help="processes computing signatures")
    parser.add_argument(
        "--on-error", choices=ON_ERROR_CHOICES, default="stop", help="malformed input lines: stop or skip"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = DedupParams(threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram, text_key=args.text_key)
    stats = deduplicate(
        args.input,
        args.output_prefix,
        params,
        workers=args.workers,
        on_error=args.on_error,
        progress=not args.no_progress,
    )
    print(stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
