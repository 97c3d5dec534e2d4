"""Record files <-> datatrove documents: readers split inputs by rank, writers give each task its own shards."""

import json

import pytest
from datatrove.data import Document

from data_tools.executors import ExecutorOptions, Stage, run_stages
from data_tools.jsonl import MalformedRecordError
from data_tools.steps import RecordReader, RecordWriter, document_from_record, record_from_document, task_files
from tests.conftest import read_jsonl

RECORDS = [
    {"id": "a", "text": "print('é')\n", "path": "x/a.py", "lang": "python", "meta": {"stars": 3, "tags": ["x"]}},
    {"id": "b", "text": "", "path": "b.py", "lang": None, "meta": {}},
    {"id": 7, "text": "x = 1\n", "score": 0.25},
]


def test_a_record_becomes_a_document_and_back_unchanged():
    for index, record in enumerate(RECORDS):
        document = document_from_record(record, index)
        assert isinstance(document, Document) and document.text == record["text"]
        assert record_from_document(document) == {**record, "id": str(record["id"])}


def test_a_record_without_an_id_is_named_by_its_path_or_position_and_another_text_key_is_kept():
    document = document_from_record({"content": "y = 2\n", "path": "p.py"}, 4, text_key="content")
    assert (document.id, document.text, document.metadata) == ("p.py", "y = 2\n", {"path": "p.py"})
    assert record_from_document(document, text_key="content") == {"id": "p.py", "content": "y = 2\n", "path": "p.py"}
    assert document_from_record({"text": "z\n"}, 9).id == "#9"
    with pytest.raises(MalformedRecordError, match="record 2 has no string field 'text'.*--text-key"):
        document_from_record({"body": "z"}, 2)


def test_task_files_deal_the_sorted_inputs_round_robin_and_cover_each_once():
    files = [f"in/{name}.jsonl" for name in "edcba"]
    split = [task_files(files, rank, 3) for rank in range(3)]
    assert split == [["in/a.jsonl", "in/d.jsonl"], ["in/b.jsonl", "in/e.jsonl"], ["in/c.jsonl"]]
    assert task_files(files, 0, 1) == sorted(files)
    assert [task_files(files[:2], rank, 3) for rank in range(3)] == [["in/d.jsonl"], ["in/e.jsonl"], []]


def _inputs(tmp_path, files=5, per_file=4):
    folder = tmp_path / "in"
    folder.mkdir()
    records = []
    for f in range(files):
        rows = [{"id": f"{f}-{i}", "text": f"v = {f * 10 + i}\n", "meta": {"file": f, "i": i}} for i in range(per_file)]
        (folder / f"part-{f}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        records.extend(rows)
    return folder, records


def _copy(inputs, output_prefix, tasks):
    stage = Stage(
        "copy",
        [RecordReader([inputs]), RecordWriter(output_prefix)],
        logging_dir=f"{output_prefix}.datatrove/copy",
    )
    run_stages([stage], ExecutorOptions(tasks=tasks, workers=2))


def test_each_task_writes_its_own_shards_and_together_they_hold_every_record_unchanged(tmp_path):
    inputs, records = _inputs(tmp_path)
    _copy(inputs, tmp_path / "one" / "out", tasks=1)
    _copy(inputs, tmp_path / "three" / "out", tasks=3)
    one = sorted((tmp_path / "one").glob("out-*.jsonl"))
    three = sorted((tmp_path / "three").glob("out-*.jsonl"))
    assert [p.name for p in one] == ["out-00000-00000.jsonl"]
    assert [p.name for p in three] == ["out-00000-00000.jsonl", "out-00001-00000.jsonl", "out-00002-00000.jsonl"]
    assert read_jsonl(*one) == records  # one task reads the sorted files in order
    by_id = sorted(read_jsonl(*three), key=lambda r: r["id"])
    assert by_id == sorted(records, key=lambda r: r["id"])
    # task 1 of 3 read files 1 and 4 of the sorted five
    assert {r["meta"]["file"] for r in read_jsonl(three[1])} == {1, 4}


def test_the_same_inputs_and_task_count_give_byte_identical_shards(tmp_path):
    inputs, _ = _inputs(tmp_path)
    _copy(inputs, tmp_path / "first" / "out", tasks=3)
    _copy(inputs, tmp_path / "again" / "out", tasks=3)
    first = {p.name: p.read_bytes() for p in (tmp_path / "first").glob("out-*.jsonl")}
    again = {p.name: p.read_bytes() for p in (tmp_path / "again").glob("out-*.jsonl")}
    assert first == again and len(first) == 3


def test_inputs_are_expanded_when_a_task_runs_not_when_the_pipeline_is_built(tmp_path):
    reader = RecordReader([tmp_path / "later-*.jsonl"])  # nothing there yet: a later stage's input
    (tmp_path / "later-0.jsonl").write_text(json.dumps({"id": "z", "text": "late\n"}) + "\n")
    assert [d.id for d in reader.run(rank=0, world_size=1)] == ["z"]


def test_a_task_with_more_tasks_than_files_writes_no_shard(tmp_path):
    inputs, records = _inputs(tmp_path, files=2)
    _copy(inputs, tmp_path / "out", tasks=3)
    assert sorted(p.name for p in tmp_path.glob("out-*.jsonl")) == ["out-00000-00000.jsonl", "out-00001-00000.jsonl"]
    assert sorted(r["id"] for r in read_jsonl(*tmp_path.glob("out-*.jsonl"))) == sorted(r["id"] for r in records)
