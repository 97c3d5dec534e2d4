"""Seeds for seed-conditioned synthetic prompts: code snippets and identifier sets drawn from a corpus.

A prompt that quotes a real snippet (or asks to use a handful of identifiers taken from one file)
is different for every seed, so the number of distinct prompts grows with the corpus instead of
with hand-written lists. By default the seeds come from the quality-filtered code shards.

Documents are drawn uniformly (``pool`` of them, with a seed) from the corpus; from each one the
snippets are its functions and methods of ``min_lines``..``max_lines`` lines (files that do not
parse as Python give line windows instead), and the identifier sets are its own names, shuffled
and grouped. Equal seeds from different files are kept once. The same corpus, pool and seed always
give the same seeds in the same order.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import keyword
import os
import random
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from data_tools.quality.documents import Document, corpus_files, sample_documents
from megaphi.common.errors import UserError

# The README's recipe writes the deduplicated, quality-filtered code here.
DEFAULT_SEED_CORPUS = "data/code_filtered-*.jsonl"
SEED_KINDS = ("snippet", "identifiers")
# Names every file uses say nothing about it.
_COMMON_NAMES = set(dir(builtins)) | set(keyword.kwlist) | {"self", "cls", "args", "kwargs", "main", "test"}


@dataclass(frozen=True)
class SeedOptions:
    pool: int = 10_000  # documents drawn from the corpus
    kinds: tuple[str, ...] = SEED_KINDS
    min_lines: int = 3
    max_lines: int = 40
    max_chars: int = 2_000  # longer snippets are skipped: they would crowd out the answer
    identifiers_per_set: int = 4
    max_sets_per_document: int = 8
    text_key: str = "text"

    def validate(self) -> None:
        if self.pool < 1:
            raise UserError(f"--seed-pool must be at least 1, got {self.pool}")
        unknown = [k for k in self.kinds if k not in SEED_KINDS]
        if unknown or not self.kinds:
            raise UserError(f"seed kinds must be among {', '.join(SEED_KINDS)}, got {list(self.kinds)}")
        if not 1 <= self.min_lines <= self.max_lines:
            raise UserError(f"need 1 <= min_lines <= max_lines, got {self.min_lines} and {self.max_lines}")
        if self.identifiers_per_set < 1 or self.max_sets_per_document < 1:
            raise UserError("identifiers_per_set and max_sets_per_document must be at least 1")


@dataclass(frozen=True)
class Seed:
    kind: str  # "snippet" or "identifiers"
    source: str  # id of the corpus document
    where: str  # "lines 12-30" for a snippet, "" for identifiers
    text: str  # the snippet's code, or the identifiers joined by ", "

    def meta(self) -> dict[str, str]:
        """Where the seed came from, for the output record (the seed itself fills the template)."""
        return {
            "seed_kind": self.kind,
            "seed_source": self.source,
            **({"seed_where": self.where} if self.where else {}),
        }


@dataclass
class ParsedFile:
    """What one walk over a Python file's syntax tree finds: its functions and every name it uses."""

    functions: list[ast.FunctionDef | ast.AsyncFunctionDef]
    names: set[str]


def parse_file(text: str) -> ParsedFile | None:
    """None for a file that does not parse as Python (parsing is most of the cost: done once per file)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    parsed = ParsedFile([], set())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parsed.functions.append(node)
            parsed.names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            parsed.names.add(node.name)
        elif isinstance(node, ast.Name):
            parsed.names.add(node.id)
        elif isinstance(node, ast.Attribute):
            parsed.names.add(node.attr)
        elif isinstance(node, ast.arg):
            parsed.names.add(node.arg)
    return parsed


def snippets(text: str, options: SeedOptions) -> list[tuple[int, int, str]]:
    """(first line, last line, code) of the functions and methods of a Python file, in file order;
    line windows when the file does not parse."""
    return _snippets(text, parse_file(text), options)


def _snippets(text: str, parsed: ParsedFile | None, options: SeedOptions) -> list[tuple[int, int, str]]:
    lines = text.splitlines()
    if parsed is None:
        spans = [
            (start, min(start + options.max_lines, len(lines))) for start in range(0, len(lines), options.max_lines)
        ]
    else:
        spans = sorted(
            {
                (min([n.lineno, *(d.lineno for d in n.decorator_list)]) - 1, n.end_lineno or n.lineno)
                for n in parsed.functions
            }
        )
    out = []
    for start, end in spans:
        chunk = lines[start:end]
        code = "\n".join(chunk).strip("\n")
        body = [line for line in chunk if line.strip()]
        if options.min_lines <= len(body) and end - start <= options.max_lines and len(code) <= options.max_chars:
            out.append((start + 1, end, textwrap.dedent(code)))
    return out


def identifiers(text: str) -> list[str]:
    """The distinct names a Python file defines or uses (sorted), without builtins, keywords, private
    names and names shorter than three characters; none for a file that does not parse."""
    parsed = parse_file(text)
    return [] if parsed is None else _identifiers(parsed)


def _identifiers(parsed: ParsedFile) -> list[str]:
    return sorted(n for n in parsed.names if len(n) >= 3 and n not in _COMMON_NAMES and not n.startswith("_"))


def document_seeds(document: Document, options: SeedOptions, seed: int) -> list[Seed]:
    parsed = parse_file(document.text)
    out: list[Seed] = []
    if "snippet" in options.kinds:
        out += [
            Seed("snippet", document.id, f"lines {first}-{last}", code)
            for first, last, code in _snippets(document.text, parsed, options)
        ]
    if "identifiers" in options.kinds and parsed is not None:
        names = _identifiers(parsed)
        # Seeded by the document, not by its position: the sets of a file do not change when the pool does.
        random.Random(f"{seed}:{document.id}").shuffle(names)
        k = options.identifiers_per_set
        groups = [sorted(names[i : i + k]) for i in range(0, len(names) - k + 1, k)][: options.max_sets_per_document]
        out += [Seed("identifiers", document.id, "", ", ".join(group)) for group in groups]
    return out


def load_seeds(
    inputs: Sequence[str | os.PathLike], options: SeedOptions = SeedOptions(), *, seed: int = 0
) -> list[Seed]:
    """The seeds of ``options.pool`` documents drawn from the corpus files; a ValueError when the
    corpus is missing or yields no seed at all."""
    options.validate()
    try:
        files = corpus_files(inputs)
    except ValueError as exc:
        raise UserError(
            f"seed corpus: {exc}; pass --seed-corpus with the quality-filtered code shards "
            f"(default {DEFAULT_SEED_CORPUS})"
        ) from None
    seen: set[bytes] = set()
    seeds: list[Seed] = []
    # synth has no --on-error: a malformed seed line is fixed in the corpus, or other shards are chosen
    hint = "fix or remove that line, or pass other shards with --seed-corpus"
    documents = sample_documents(files, options.pool, seed, text_key=options.text_key, unique_ids=False, hint=hint)
    for document in documents:
        for item in document_seeds(document, options, seed):
            key = hashlib.blake2b(f"{item.kind}\n{item.text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if key not in seen:
                seen.add(key)
                seeds.append(item)
    if not seeds:
        raise UserError(
            f"seed corpus {', '.join(map(str, inputs))} yields no {' or '.join(options.kinds)} seed: "
            f"it needs Python files with functions of {options.min_lines}-{options.max_lines} lines"
        )
    return seeds
