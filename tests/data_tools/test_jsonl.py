import pytest

from data_tools.jsonl import JsonlShardWriter, OutputExistsError
from tests.conftest import read_jsonl

RECORDS = [{"id": str(i), "text": "x" * 50} for i in range(10)]


def test_shards_appear_complete_and_in_order_when_the_writer_closes(tmp_path):
    with JsonlShardWriter(tmp_path / "out", max_bytes=200) as writer:
        for record in RECORDS:
            writer.write(record)
        assert not list(tmp_path.glob("out-*.jsonl")), "no shard is visible before the writer finishes"
    assert [p.name for p in writer.paths] == [f"out-{i:05d}.jsonl" for i in range(len(writer.paths))]
    assert len(writer.paths) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in writer.paths], "no temporary file left"
    assert read_jsonl(*writer.paths) == RECORDS


def test_a_failure_while_writing_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError, match="input broke"):
        with JsonlShardWriter(tmp_path / "out", max_bytes=200) as writer:
            for record in RECORDS:
                writer.write(record)
            raise RuntimeError("input broke")
    assert list(tmp_path.iterdir()) == []


def test_shards_of_an_earlier_run_are_not_mixed_with(tmp_path):
    (tmp_path / "out-00000.jsonl").write_text("{}\n")
    with pytest.raises(OutputExistsError, match="out-00000.jsonl already exists"):
        JsonlShardWriter(tmp_path / "out")
