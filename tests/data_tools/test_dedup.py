import json
import sysconfig
from pathlib import Path

import pytest

from data_tools.jsonl import MalformedRecordError
from data_tools.dedup import DedupError, DedupParams, Deduplicator, deduplicate, exact_key, main, signature
from tests.conftest import damaged_gzip, read_jsonl

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def stdlib_records() -> list[dict]:
    files = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py"))[:8]
    return [{"text": f.read_text(), "path": str(f)} for f in files if len(f.read_text()) > 500]


def test_exact_key_ignores_trailing_spaces_and_blank_lines():
    assert exact_key("def f():\n    return 1\n") == exact_key("def f():   \n\n\n    return 1\n\n")
    assert exact_key("def f():\n    return 1\n") != exact_key("def f():\n    return 2\n")


def test_first_occurrence_is_kept_and_copies_are_removed_with_their_reason(tmp_path, stdlib_records):
    exact_copy = {"text": stdlib_records[0]["text"] + "\n\n  \n", "path": "copy-exact"}
    near_copy = {"text": stdlib_records[1]["text"] + "\n# one more comment at the end\n", "path": "copy-near"}
    inputs = write_jsonl(tmp_path / "in.jsonl", stdlib_records + [exact_copy, near_copy])
    stats = deduplicate([inputs], tmp_path / "out", progress=False)

    kept = read_jsonl(*stats.shards)
    assert [r["path"] for r in kept] == [r["path"] for r in stdlib_records]
    removed = {r["id"]: r for r in read_jsonl(tmp_path / "out.removed.jsonl")}
    assert removed["copy-exact"]["reason"] == "exact"
    assert removed["copy-exact"]["duplicate_of"] == stdlib_records[0]["path"]
    assert removed["copy-near"]["reason"] == "near"
    assert removed["copy-near"]["duplicate_of"] == stdlib_records[1]["path"]
    assert removed["copy-near"]["jaccard"] >= 0.8
    report = json.loads((tmp_path / "out.dedup.json").read_text())
    assert (report["documents"], report["kept"], report["exact_duplicates"], report["near_duplicates"]) == (
        len(stdlib_records) + 2,
        len(stdlib_records),
        1,
        1,
    )


def test_parallel_signatures_give_the_same_output_as_one_process(tmp_path, stdlib_records):
    inputs = write_jsonl(tmp_path / "in.jsonl", stdlib_records + stdlib_records[:3])
    one = deduplicate([inputs], tmp_path / "one", progress=False)
    two = deduplicate([inputs], tmp_path / "two", workers=2, progress=False)
    assert read_jsonl(*one.shards) == read_jsonl(*two.shards)
    assert (tmp_path / "one.removed.jsonl").read_text() == (tmp_path / "two.removed.jsonl").read_text()


def test_dissimilar_documents_are_all_kept():
    dedup = Deduplicator(DedupParams())
    texts = [f"def function_{i}(x):\n    return x * {i} + {i * i} - sum(range({i}))\n" * (i % 3 + 1) for i in range(1)]
    texts += [(STDLIB / name).read_text() for name in ("textwrap.py", "shlex.py", "bisect.py", "colorsys.py")]
    decisions = [dedup.check(str(i), exact_key(t), signature(t, 128, 5)) for i, t in enumerate(texts)]
    assert decisions == [None] * len(texts)


def test_bad_inputs_give_one_clear_error(tmp_path, capsys):
    with pytest.raises(DedupError, match="threshold"):
        deduplicate([write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])], tmp_path / "o", DedupParams(threshold=1.5))
    with pytest.raises(MalformedRecordError, match="no string field .text."):
        deduplicate([write_jsonl(tmp_path / "b.jsonl", [{"content": "x"}])], tmp_path / "o", progress=False)
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{broken\n')
    assert main(["--input", str(tmp_path / "c.jsonl"), "--output-prefix", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "c.jsonl:2" in capsys.readouterr().err
    assert (
        main(
            [
                "--input",
                str(tmp_path / "c.jsonl"),
                "--output-prefix",
                str(tmp_path / "o"),
                "--no-progress",
                "--on-error",
                "skip",
            ]
        )
        == 0
    )


@pytest.mark.parametrize("how", ["truncated", "bitflip", "crc"])
def test_a_damaged_gzip_input_is_one_error_line_naming_the_file_and_leaves_no_output(tmp_path, capsys, how):
    path = tmp_path / "in.jsonl.gz"
    damaged_gzip(path, [{"id": str(i), "text": f"def f{i}():\n    return {i} * {i % 97}\n"} for i in range(6000)], how)
    argv = [
        "--input",
        str(path),
        "--output-prefix",
        str(tmp_path / "out" / "dd"),
        "--on-error",
        "skip",
        "--no-progress",
    ]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {path}:") and "truncated or corrupt" in line
    assert not list((tmp_path / "out").iterdir()), "no kept shard, removed list or report is left"
