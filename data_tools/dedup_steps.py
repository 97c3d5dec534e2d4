"""The MinHash steps of the dedup stage (:mod:`data_tools.dedup` runs them and documents the stages):
the signatures (stage 1) on datatrove's signature step with megaphi's shingles, each document's row of
the :class:`DocumentTable`, and the clusters (stage 3) that decide, from datatrove's candidate pairs,
which documents are removed as duplicates of which kept one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.word_tokenizers import WordTokenizer

from data_tools.minhash import (
    HASH_CONFIG,
    WORD,
    DedupError,
    DedupParams,
    MinHasher,
    estimated_jaccard,
    exact_key,
    lsh_bands,
)
from megaphi.common.files import atomic_open, atomic_write_text

POSITION_KEY = "_dedup_position"  # a document's (file, record) in the whole input, from the reader to the signatures


class DocumentTable:
    """Per task, one fixed-size row per document in reading order (its place in the whole input, exact
    key, full MinHash signature) in ``TTTTT.rows``, and its id in ``TTTTT.ids`` (a JSON string a line):
    what the clusters step needs to order, confirm and name the candidates datatrove's buckets find."""

    def __init__(self, folder: Path, num_perm: int):
        self.folder = folder
        self.dtype = np.dtype([("file", "<u4"), ("record", "<u8"), ("exact", "V16"), ("sig", "<u4", (num_perm,))])

    def rows_path(self, rank: int) -> Path:
        return self.folder / f"{rank:05d}.rows"

    def ids_path(self, rank: int) -> Path:
        return self.folder / f"{rank:05d}.ids"

    def read(self, rank: int, wanted: np.ndarray, block: int = 1 << 16) -> np.ndarray:
        """Rows ``wanted`` (ascending row numbers) of a task, read block by block, so that memory holds
        those rows and one block, never the whole table."""
        found = np.empty(len(wanted), dtype=self.dtype)
        with open(self.rows_path(rank), "rb") as f:
            done = 0
            while done < len(wanted):
                start = int(wanted[done])
                f.seek(start * self.dtype.itemsize)
                chunk = np.fromfile(f, dtype=self.dtype, count=block)
                rest = wanted[done:]
                take = rest[rest < start + len(chunk)]
                if not len(take):
                    raise DedupError(f"{self.rows_path(rank)} has no row {start}: rerun the dedup command")
                found[done : done + len(take)] = chunk[take - start]
                done += len(take)
        return found

    def ids(self, rank: int, wanted: set[int]) -> dict[int, str]:
        """The ids of documents ``wanted`` (row numbers) of a task, read in one pass."""
        found: dict[int, str] = {}
        with open(self.ids_path(rank), encoding="utf-8") as f:
            for row, line in enumerate(f):
                if row in wanted:
                    found[row] = json.loads(line)
        return found


class _Words(WordTokenizer):
    """megaphi's words (``\\w+`` runs) as datatrove's word tokenizer, so that its default (spaCy) is
    neither loaded nor needed. The shingles themselves come from :func:`data_tools.minhash.shingles`."""

    def word_tokenize(self, text: str) -> list[str]:
        return WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in WORD.finditer(text)]


def minhash_config(params: DedupParams) -> MinhashConfig:
    """Datatrove's view of the MinHash settings: the bands and rows the threshold calls for."""
    bands, rows = lsh_bands(params.threshold, params.num_perm)
    return MinhashConfig(n_grams=params.ngram, num_buckets=bands, hashes_per_bucket=rows, hash_config=HASH_CONFIG)


class DedupSignatures(MinhashDedupSignature):
    """Stage 1: datatrove's signature step (per-band files, sorted and verified) on megaphi's shingles
    and hash functions (:mod:`data_tools.minhash`; datatrove's own shingles lowercase the text, replace
    numbers and punctuation and give a document shorter than ``ngram`` words no shingle at all), plus
    each document's :class:`DocumentTable` row."""

    name = "🎯 MinHash signatures (word n-grams)"

    def __init__(self, folder: Path, params: DedupParams):
        config = minhash_config(params)
        super().__init__(output_folder=os.fspath(folder / "signatures"), config=config, language=_Words())
        self.params = params
        self.bands, self.rows = config.num_buckets, config.hashes_per_bucket
        self.hasher = MinHasher(params.num_perm, params.ngram)
        self.table = DocumentTable(folder / "documents", params.num_perm)
        self._signature: np.ndarray | None = None

    def get_shingles(self, text: str) -> np.ndarray:
        return self.hasher.shingle_hashes(text)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        self._signature = self.hasher.signature_of_hashes(shingles)
        banded = self._signature[: self.bands * self.rows].reshape(self.bands, self.rows)
        return banded.tolist()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> None:
        self.table.folder.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[int, int, bytes, np.ndarray]] = []
        with (
            open(self.table.rows_path(rank), "wb") as row_file,
            open(self.table.ids_path(rank), "w", encoding="utf-8") as id_file,
        ):

            def flush() -> None:
                np.array(rows, dtype=self.table.dtype).tofile(row_file)
                rows.clear()

            def recorded(documents: DocumentsPipeline) -> Iterator[Document]:
                # datatrove's run computes each signature when it takes the next document from here,
                # so the row of a document is written when the one after it is asked for.
                for document in documents or ():
                    file_number, record_number = document.metadata.pop(POSITION_KEY)
                    yield document
                    assert self._signature is not None, "every text has at least one shingle"
                    rows.append((file_number, record_number, exact_key(document.text), self._signature))
                    self._signature = None
                    id_file.write(json.dumps(document.id) + "\n")
                    if len(rows) == 4096:
                        flush()

            super().run(recorded(data), rank, world_size)
            flush()


class DedupClusters(PipelineStep):
    """Stage 3: the decisions (see :mod:`data_tools.dedup`'s docstring), from datatrove's candidate pairs."""

    type = "🫂 - DEDUP"
    name = "🎯 MinHash clusters (first kept)"

    def __init__(self, folder: Path, params: DedupParams, tasks: int, removed_path: str):
        super().__init__()
        self.folder = folder
        self.params = params
        self.tasks = tasks
        self.removed_path = removed_path
        self.table = DocumentTable(folder / "documents", params.num_perm)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        with self.track_time():
            documents, decisions = self._decide(*self._band_groups())
            self._write(documents, decisions)

    def _band_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(document, group) pairs: the documents that agree on one band form a group. Datatrove writes
        each group as a chain of pairs (a1 a2), (a2 a3), ... sorted by band value; a document is in a
        band's file once, so a new group starts where a pair's first document is not the last one's
        second. A document is ``task << 32 | row``."""
        documents, groups, next_group = [], [], 0
        for path in sorted((self.folder / "buckets").glob("*.dups")):
            pairs = np.fromfile(path, dtype="<u4").reshape(-1, 4).astype(np.uint64)
            if not len(pairs):
                continue
            first = pairs[:, 0] << np.uint64(32) | pairs[:, 1]
            second = pairs[:, 2] << np.uint64(32) | pairs[:, 3]
            starts = np.ones(len(pairs), dtype=bool)
            starts[1:] = first[1:] != second[:-1]
            group = np.cumsum(starts) - 1 + next_group
            next_group = int(group[-1]) + 1
            documents += [first[starts], second]
            groups += [group[starts], group]
        if not documents:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return np.concatenate(documents), np.concatenate(groups)

    def _decide(
        self, members: np.ndarray, groups: np.ndarray
    ) -> tuple[list[tuple[int, int]], dict[int, tuple[str, int, float]]]:
        """The documents with candidates as (task, row), in input order, and the decisions: removed
        document -> (reason, the kept document it duplicates, estimated Jaccard), documents by their
        number in that list."""
        keys, member_index = np.unique(members, return_inverse=True)
        task = (keys >> np.uint64(32)).astype(np.int64)
        row = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
        table = np.empty(len(keys), dtype=self.table.dtype)  # the rows of these documents only
        for t in np.unique(task):
            table[task == t] = self.table.read(int(t), row[task == t])  # keys are sorted: rows ascend
        order = np.lexsort((table["record"], table["file"]))
        number = np.empty(len(keys), np.int64)
        number[order] = np.arange(len(keys))
        # each document's groups, as slices of one array sorted by document number
        by_document = np.argsort(number[member_index], kind="stable")
        group_of = groups[by_document]
        bounds = np.searchsorted(number[member_index][by_document], np.arange(len(keys) + 1)).tolist()
        documents = list(zip(task[order].tolist(), row[order].tolist()))
        exact, signatures = table["exact"], table["sig"]  # by key: document d is key at[d]
        at = order.tolist()

        # the kept members of each group: most groups have one at most, so the first one in a list
        first_kept: list[int] = [-1] * (int(groups.max()) + 1 if len(groups) else 0)
        more_kept: dict[int, list[int]] = {}
        decisions: dict[int, tuple[str, int, float]] = {}
        threshold = self.params.threshold
        for d in range(len(documents)):
            mine_groups = group_of[bounds[d] : bounds[d + 1]].tolist()
            best: tuple[str, int, float] | None = None
            candidates = {k for g in mine_groups if first_kept[g] >= 0 for k in (first_kept[g], *more_kept.get(g, ()))}
            for k in sorted(candidates):
                if exact[at[k]] == exact[at[d]]:
                    best = ("exact", k, 1.0)  # a normalised text has one kept copy at most
                    break
                jaccard = estimated_jaccard(signatures[at[d]], signatures[at[k]])
                if jaccard >= threshold and (best is None or jaccard > best[2]):
                    best = ("near", k, jaccard)  # the most similar; of equals, the first
            if best is None:
                for g in mine_groups:
                    if first_kept[g] < 0:
                        first_kept[g] = d
                    else:
                        more_kept.setdefault(g, []).append(d)
            else:
                decisions[d] = best
        self.stat_update("documents_with_candidates", value=len(documents))
        return documents, decisions

    def _write(
        self,
        documents: list[tuple[int, int]],
        decisions: dict[int, tuple[str, int, float]],
    ) -> None:
        wanted: dict[int, set[int]] = {t: set() for t in range(self.tasks)}
        for d, (_, k, _) in decisions.items():
            for t, r in (documents[d], documents[k]):
                wanted[t].add(r)
        ids = {t: self.table.ids(t, wanted[t]) for t in range(self.tasks) if wanted[t]}
        counts = {t: {"exact": 0, "near": 0} for t in range(self.tasks)}
        removed_rows: dict[int, list[int]] = {t: [] for t in range(self.tasks)}
        with atomic_open(self.removed_path) as removed:
            for d in sorted(decisions):  # input order
                reason, k, jaccard = decisions[d]
                (t, r), (kt, kr) = documents[d], documents[k]
                line = {"id": ids[t][r], "reason": reason, "duplicate_of": ids[kt][kr], "jaccard": round(jaccard, 4)}
                removed.write(json.dumps(line) + "\n")
                removed_rows[t].append(r)
                counts[t][reason] += 1
                self.stat_update(f"removed_{reason}")
        remove_folder = self.folder / "remove"
        remove_folder.mkdir(parents=True, exist_ok=True)
        for t, task_rows in removed_rows.items():
            # datatrove's filter reads, per task, the row numbers of the documents to drop, ascending
            np.array(sorted(task_rows), dtype="<u4").tofile(remove_folder / f"{t:06d}.remove")
        atomic_write_text(os.fspath(self.folder / "clusters.json"), json.dumps({str(t): c for t, c in counts.items()}))
