"""Corpus gathering: directories, JSONL, parquet, saved HF datasets -> JSONL shards; stdlib by default."""

import json
from itertools import islice

import pytest

from data_tools.corpus import build_corpus, main
from data_tools.corpus_sources import CorpusError, SizeLimits, iter_corpus, stdlib_dir
from data_tools.executors import ExecutorOptions
from data_tools.jsonl import MalformedRecordError
from tests.conftest import damaged_gzip, read_jsonl


@pytest.fixture
def source_tree(tmp_path):
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("def a():\n    return 1\n")
    (root / "pkg" / "b.py").write_text("B = 2\n" * 50)
    (root / "pkg" / "notes.md").write_text("# notes\n")
    (root / "pkg" / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "a.py").write_text("cached = True\n")
    (root / "empty.py").write_text("")
    return root


def test_default_corpus_is_the_running_interpreters_standard_library():
    records = list(islice(iter_corpus(), 30))
    assert len(records) == 30
    for record in records:
        assert record["lang"] == "python" and record["meta"]["root"] == str(stdlib_dir())
        assert (stdlib_dir() / record["path"]).read_text(encoding="utf-8") == record["text"]


def test_directory_gathering_filters_language_and_size_and_counts_undecodable_files(source_tree, tmp_path):
    stats = build_corpus([source_tree], tmp_path / "out" / "corpus", limits=SizeLimits(1, 200))
    records = read_jsonl(*stats.shards)
    assert [r["path"] for r in records] == ["pkg/a.py"]
    assert records[0]["text"] == "def a():\n    return 1\n"
    assert (stats.undecodable, stats.too_small, stats.too_large) == (1, 1, 1)
    everything = build_corpus([source_tree], tmp_path / "all", languages=None)
    assert sorted(r["path"] for r in read_jsonl(*everything.shards)) == ["pkg/a.py", "pkg/b.py", "pkg/notes.md"]


def test_include_patterns_select_files_under_a_directory(source_tree, tmp_path):
    stats = build_corpus([source_tree], tmp_path / "c", include=["pkg/b*"])
    assert [r["path"] for r in read_jsonl(*stats.shards)] == ["pkg/b.py"]


def test_shards_roll_over_at_the_byte_limit_and_keep_order(tmp_path):
    lines = [json.dumps({"text": f"x = {i}\n" * 20, "path": f"f{i}.py"}) for i in range(30)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    stats = build_corpus([tmp_path / "in.jsonl"], tmp_path / "out", shard_bytes=1000)
    assert len(stats.shards) > 3
    assert [r["path"] for r in read_jsonl(*stats.shards)] == [f"f{i}.py" for i in range(30)]


def test_parquet_in_the_stack_layout_maps_content_and_path(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "content": ["print(1)\n", "print(2)\n"],
            "max_stars_repo_path": ["a/x.py", "b/y.py"],
            "max_stars_count": [5, 7],
        }
    )
    pq.write_table(table, tmp_path / "stack.parquet")
    records = list(iter_corpus([tmp_path / "stack.parquet"]))
    source = tmp_path / "stack.parquet"
    assert records == [
        {"id": f"{source}:1", "text": "print(1)\n", "path": "a/x.py", "lang": "python", "meta": {"max_stars_count": 5}},
        {"id": f"{source}:2", "text": "print(2)\n", "path": "b/y.py", "lang": "python", "meta": {"max_stars_count": 7}},
    ]


def test_every_record_gets_an_id_unique_across_inputs(tmp_path):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"NAME = {name!r}\n")
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"text": "a = 1\n", "id": "kept-id"}) + "\n" + json.dumps({"text": "b = 2\n"}) + "\n"
    )
    records = list(iter_corpus([tmp_path / "one", tmp_path / "two", tmp_path / "rows.jsonl"]))
    assert [r["path"] for r in records[:2]] == ["__init__.py", "__init__.py"]
    assert [r["id"] for r in records] == [
        str(tmp_path / "one" / "__init__.py"),
        str(tmp_path / "two" / "__init__.py"),
        "kept-id",
        f"{tmp_path / 'rows.jsonl'}:2",
    ]


def test_hugging_face_dataset_saved_on_disk_is_read(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["a = 1\n", "b = 2\n"], "path": ["a.py", "b.py"]}).save_to_disk(
        str(tmp_path / "hf")
    )
    assert [r["text"] for r in iter_corpus([tmp_path / "hf"])] == ["a = 1\n", "b = 2\n"]


def test_malformed_jsonl_line_stops_with_file_and_line_or_is_skipped(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a = 1\\n"}\n{"text": "b = \n{"text": "c = 3\\n"}\n')
    with pytest.raises(MalformedRecordError, match=rf"{path}:2: malformed JSON .*--on-error skip"):
        list(iter_corpus([path]))
    stats = build_corpus([path], tmp_path / "out", on_error="skip")
    assert [r["text"] for r in read_jsonl(*stats.shards)] == ["a = 1\n", "c = 3\n"]
    assert stats.read.skipped == 1 and f"{path}:2" in stats.read.errors[0]


def test_record_without_text_names_the_record_or_is_skipped(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"body": "x"}\n{"text": null}\n{"text": "ok = 1\\n"}\n')
    with pytest.raises(CorpusError, match="record 1: no string in field text or content.*--on-error skip"):
        list(iter_corpus([tmp_path / "in.jsonl"]))
    records = list(iter_corpus([tmp_path / "in.jsonl"], on_error="skip"))
    assert [r["text"] for r in records] == ["ok = 1\n"]


def test_empty_corpus_is_an_error(source_tree, tmp_path):
    with pytest.raises(CorpusError, match="^the corpus is empty"):
        build_corpus([source_tree], tmp_path / "out", languages=["rust"])


def test_tasks_read_contiguous_blocks_of_files_and_together_write_the_one_task_corpus_in_order(source_tree, tmp_path):
    for name in ("r1", "r2"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"text": f"{name} = 1\n", "id": name}) + "\n")
    inputs = [source_tree, tmp_path / "r1.jsonl", tmp_path / "r2.jsonl"]
    one = build_corpus(inputs, tmp_path / "one" / "c", languages=None)
    three = build_corpus(inputs, tmp_path / "three" / "c", languages=None, options=ExecutorOptions(tasks=3))
    assert [r["id"] for r in read_jsonl(*one.shards)] == [
        str(source_tree / "pkg" / "a.py"),
        str(source_tree / "pkg" / "b.py"),
        str(source_tree / "pkg" / "notes.md"),
        "r1",
        "r2",
    ]
    assert read_jsonl(*three.shards) == read_jsonl(*one.shards)
    assert (three.written, three.files, three.undecodable, three.too_small) == (5, 7, 1, 1)
    # the 7 units in order: empty.py (too small), pkg/a.py, pkg/b.py, pkg/latin1.py (undecodable),
    # pkg/notes.md, r1.jsonl, r2.jsonl; blocks of 2, 2 and 3
    report = json.loads((tmp_path / "three" / "c.corpus.json").read_text())
    assert report["summary"] == three.summary()
    assert [(t["files"], t["written"], t["too_small"], t["undecodable"]) for t in report["tasks"]] == [
        (2, 1, 1, 0),
        (2, 1, 0, 1),
        (3, 3, 0, 0),
    ]


def test_cli_writes_shards_and_reports_bad_input_in_one_line(source_tree, tmp_path, capsys):
    assert main(["--input", str(source_tree), "--output-prefix", str(tmp_path / "c"), "--no-progress"]) == 0
    assert "wrote 2 documents" in capsys.readouterr().out
    assert (tmp_path / "c-00000-00000.jsonl").exists()
    assert main(["--input", str(tmp_path / "missing"), "--output-prefix", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert main(["--lang", "cobol", "--output-prefix", str(tmp_path / "e")]) == 2
    assert "unknown language 'cobol'" in capsys.readouterr().err


def test_glob_inputs_are_expanded_in_order_and_an_empty_glob_is_an_error(tmp_path):
    for shard in ("b", "a"):
        (tmp_path / f"part-{shard}.jsonl").write_text(json.dumps({"text": f"print('{shard}')\n", "path": shard}) + "\n")
    records = list(iter_corpus([str(tmp_path / "part-*.jsonl")]))
    assert [r["path"] for r in records] == ["a", "b"]
    with pytest.raises(CorpusError, match="matches no files"):
        list(iter_corpus([str(tmp_path / "none-*.jsonl")]))


def test_a_second_run_finds_its_tasks_done_and_a_run_with_other_inputs_into_the_same_prefix_is_refused(
    tmp_path, capsys
):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "x = 1\n", "path": "a.py"}) + "\n")
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": "y = 2\n", "path": "b.py"}) + "\n")
    argv = ["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    shard = tmp_path / "out-00000-00000.jsonl"
    written = shard.read_bytes()
    assert main(argv) == 0 and shard.read_bytes() == written
    assert (
        capsys.readouterr().out.splitlines()
        == [
            "wrote 1 documents (0.0 MB) to 1 shard(s); skipped 0 undecodable, 0 too small, 0 too large, 0 malformed records"
        ]
        * 2
    )
    argv[1] = str(tmp_path / "other.jsonl")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {tmp_path / 'out.datatrove' / 'corpus'} holds a run of stage corpus with another settings"
    )
    assert err.count("\n") == 1
    assert shard.read_bytes() == written


def test_bad_executor_flags_are_one_line(tmp_path, capsys):
    assert main(["--output-prefix", str(tmp_path / "c"), "--executor", "slurm"]) == 2
    assert capsys.readouterr().err == "error: --executor slurm needs --slurm-partition (sinfo lists the partitions)\n"


@pytest.mark.parametrize("how", ["truncated", "bitflip", "crc"])
def test_a_damaged_gzip_input_is_one_error_line_naming_the_file_and_leaves_no_shard(tmp_path, capsys, how):
    path = tmp_path / "rows.jsonl.gz"
    damaged_gzip(path, [{"text": f"x = {i}\n" * 20, "path": f"m{i}.py"} for i in range(3000)], how)
    argv = [
        "--input",
        str(path),
        "--output-prefix",
        str(tmp_path / "out" / "code"),
        "--shard-bytes",
        "4096",
        "--on-error",
        "skip",
        "--no-progress",
    ]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {path}:") and "truncated or corrupt" in line
    assert not list((tmp_path / "out").glob("code-*")), "no shard, complete or partial, is left"
