"""A small data recipe that tests run on several executors and compare byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from data_tools.corpus_sources import stdlib_dir

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "data_tools" / "recipes" / "stdlib.yaml"
# one record from a JSONL file next to the standard library's files, within the recipe's 400 B to 4 kB
EXTRA = {
    "id": "extra-1",
    "text": "".join(f"def extra_{i}():\n    return {i}\n\n" for i in range(20)),
    "path": "extra.py",
}


def write_extra(path: Path) -> Path:
    path.write_text(json.dumps(EXTRA) + "\n")
    return path


def train_tokenizer(out: Path) -> Path:
    """A small BPE tokenizer, trained once so that every run tokenizes with the same one."""
    subprocess.run(
        [sys.executable, "-m", "data_tools.tokenizer", "train", "--input", str(stdlib_dir() / "json")]
        + ["--out", str(out), "--vocab-size", "400"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def small_recipe(extra: Path, tokenizer: Path, tasks: int, *, quality: bool = False) -> list[str]:
    """Overrides of the stdlib recipe: the standard library's b* and c* (a* to f* with the quality filter)
    files up to 4 kB plus ``extra``,
    in ``tasks`` tasks; the quality filter (its classifier needs embeddings and training) only when asked."""
    return [
        f"corpus.input=[{stdlib_dir()}, {extra}]",
        # the quality classifier needs enough files of each heuristic label to hold out a test split
        "corpus.include=['[a-f]*.py']" if quality else "corpus.include=['[b-c]*.py']",
        "corpus.max_bytes=4000",
        f"executor.tasks={tasks}",
        f"quality.enabled={str(quality).lower()}",
        f"tokenize.tokenizer={tokenizer}",
    ]


def outputs(out: Path) -> dict[str, bytes]:
    """What a run of :func:`small_recipe` leaves for training and inspection: the corpus, quality,
    dedup and decontaminated shards and the Megatron dataset."""
    patterns = ("corpus-*.jsonl", "quality-*.jsonl", "dedup-*.jsonl", "clean-*.jsonl")
    names = [p.name for pattern in patterns for p in out.glob(pattern)]
    names += ["code_text_document.bin", "code_text_document.idx"]
    return {name: (out / name).read_bytes() for name in sorted(names)}
