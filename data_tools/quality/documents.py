"""The corpus as the quality stages see it: documents with a stable id and a fingerprint of their text.

Annotations are joined to corpus records by id (the record's "id", else its "path", which
``data_tools.corpus`` fills with the file's path) and checked by the SHA-1 of the text, so an
annotation made on one version of a file is never silently reused for a changed file.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from data_tools.jsonl import ON_ERROR_HINT, OnError, ReadStats, expand_inputs, iter_records, record_id, record_text
from megaphi.common.errors import UserError


class QualityError(UserError):
    """Inputs the quality stages cannot use as given; the message says what to change."""


@dataclass
class Document:
    id: str
    text: str
    record: dict[str, Any]

    @property
    def sha1(self) -> str:
        return text_sha1(self.text)


def text_sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def corpus_files(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """The corpus files that paths, globs or directories name (JSONL or parquet)."""
    if not inputs:
        raise QualityError("no corpus given: pass --input with the JSONL shards written by data_tools.corpus")
    try:
        return [str(p) for p in expand_inputs(inputs)]
    except FileNotFoundError as exc:
        raise QualityError(str(exc)) from None


def iter_documents(
    files: Sequence[str],
    *,
    text_key: str = "text",
    on_error: OnError = "stop",
    stats: ReadStats | None = None,
    unique_ids: bool = True,
    hint: str = ON_ERROR_HINT,
) -> Iterator[Document]:
    """Documents of the corpus files in order, each with its id (checked to be unique unless
    ``unique_ids`` is False: scoring needs no ids, joining annotations does)."""
    seen: set[str] = set()
    for index, record in enumerate(iter_records(files, on_error=on_error, stats=stats, hint=hint)):
        text = record_text(record, text_key, index)
        doc_id = record_id(record, index)
        if unique_ids:
            if doc_id in seen:
                raise QualityError(
                    f"document id {doc_id!r} occurs twice in the corpus; give each record a unique "
                    f"'id' (or 'path') field"
                )
            seen.add(doc_id)
        yield Document(doc_id, text, record)


def sample_documents(files: Sequence[str], limit: int | None, seed: int, **options: Any) -> Iterator[Document]:
    """A uniform random sample of ``limit`` documents (all when None), in corpus order.

    Two passes over the corpus (count, then pick) keep memory flat at the scale of The Stack."""
    if limit is None:
        yield from iter_documents(files, **options)
        return
    if limit < 1:
        raise QualityError(f"--limit must be at least 1, got {limit}")
    total = sum(
        1
        for _ in iter_records(files, on_error=options.get("on_error", "stop"), hint=options.get("hint", ON_ERROR_HINT))
    )
    chosen = set(random.Random(seed).sample(range(total), min(limit, total)))
    for index, document in enumerate(iter_documents(files, **options)):
        if index in chosen:
            yield document
