"""What the quality tests share: small corpora written as JSONL, and the command run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.quality.__main__ import main

ROOT = Path(__file__).resolve().parents[3]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def small_corpus(tmp_path: Path, texts: dict[str, str]) -> Path:
    return write_jsonl(
        tmp_path / "corpus-00000.jsonl",
        [{"text": text, "path": path, "lang": "python", "meta": {}} for path, text in texts.items()],
    )


@pytest.fixture
def tiny_corpus(tmp_path):
    return small_corpus(tmp_path, {"a.py": "def a():\n    return 1\n", "b.py": "B = 2\n", "c.py": "C = 3\n"})


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def filter_args(corpus: list[str], classifier: Path, prefix: Path, *extra: str) -> list[str]:
    return ["filter", "--corpus", *corpus, "--classifier", str(classifier), "--output-prefix", str(prefix), *extra]
