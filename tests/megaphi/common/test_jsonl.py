import gzip
import json

import pytest

from megaphi.common.errors import UserError
from megaphi.common.jsonl import (
    DamagedFileError,
    MalformedRecordError,
    ReadStats,
    iter_jsonl,
    iter_line_chunks,
    read_jsonl,
)
from tests.conftest import damaged_gzip

RECORDS = [{"text": f"def f{i}(x):\n    return x * {i}  # {'pad ' * (i % 7)}\n", "n": i} for i in range(3000)]


def test_plain_and_gzipped_files_read_the_same_records(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:5]) + "\n")
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress((tmp_path / "a.jsonl").read_bytes()))
    assert read_jsonl(tmp_path / "a.jsonl") == read_jsonl(tmp_path / "a.jsonl.gz") == RECORDS[:5]


def test_a_malformed_line_stops_naming_file_and_line_or_is_skipped_and_counted(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n{"a": \n{"a": 4}\n')
    with pytest.raises(MalformedRecordError, match=rf"{path}:2: expected a JSON object, got list \(pass --on-error"):
        read_jsonl(path)
    stats = ReadStats()
    assert read_jsonl(path, on_error="skip", stats=stats) == [{"a": 1}, {"a": 4}]
    assert (stats.records, stats.skipped) == (2, 2)
    assert [e.split(": ")[0] for e in stats.errors] == [f"{path}:2", f"{path}:3"]


def test_a_malformed_line_is_a_user_error_with_the_callers_hint(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("not json\n")
    with pytest.raises(UserError, match=r"samples.jsonl:1: malformed JSON \(Expecting value\) \(give MBPP"):
        read_jsonl(path, hint="give MBPP's file")


@pytest.mark.parametrize("how", ["truncated", "bitflip", "crc"])
def test_damaged_gzip_names_the_file_and_line_even_when_skipping(tmp_path, how):
    path = tmp_path / "shard.jsonl.gz"
    damaged_gzip(path, RECORDS, how)
    read = []
    # skipping bad lines does not skip damage: nothing after it can be read
    with pytest.raises(DamagedFileError, match=rf"^{path}:\d+: cannot read past byte \d+ .*truncated or corrupt"):
        for record in iter_jsonl(path, on_error="skip"):
            read.append(record)
    # (a CRC mismatch shows only at the end of the data: every record was read, and the error still
    # comes, so that a writer that is atomic leaves no output)
    assert read[:100] == RECORDS[:100], "what came before the damage is intact"
    # a flipped bit may first decompress to garbage lines: stopping names the first one
    with pytest.raises(MalformedRecordError, match=rf"^{path}:\d+: "):
        read_jsonl(path)


def test_a_crc_mismatch_says_so(tmp_path):
    damaged_gzip(tmp_path / "x.jsonl.gz", RECORDS, "crc")
    with pytest.raises(DamagedFileError, match=r"x.jsonl.gz:\d+: .*CRC check failed"):
        read_jsonl(tmp_path / "x.jsonl.gz")


def test_a_file_that_is_not_gzip_at_all_is_named(tmp_path):
    (tmp_path / "x.jsonl.gz").write_text('{"a": 1}\n')
    with pytest.raises(DamagedFileError, match=r"x.jsonl.gz:1: .*Not a gzipped file"):
        read_jsonl(tmp_path / "x.jsonl.gz")


def test_line_chunks_hold_whole_lines_and_name_damage(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS[:50]).encode()))
    chunks = list(iter_line_chunks(path, 100))
    assert all(data.endswith(b"\n") for _, data in chunks)
    assert [first for first, _ in chunks] == [
        1 + sum(d.count(b"\n") for _, d in chunks[:i]) for i in range(len(chunks))
    ]
    assert [json.loads(line) for _, d in chunks for line in d.splitlines()] == RECORDS[:50]
    damaged_gzip(path, RECORDS, "truncated")
    with pytest.raises(DamagedFileError, match=rf"{path}:\d+: cannot read past byte"):
        list(iter_line_chunks(path, 1 << 12))
