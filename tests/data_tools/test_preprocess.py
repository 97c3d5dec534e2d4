"""Preprocessing writes exactly what Megatron's IndexedDatasetBuilder writes for the same documents, in input
order, whatever the number of datatrove tasks; a killed run finishes only what is missing."""

import json
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.executors import ExecutorOptions
from data_tools.preprocess import main, preprocess, report_path
from data_tools.tokenizer import load_tokenizer, train_bpe
from megaphi.data import IndexedDataset
from megaphi.common.errors import UserError
from megaphi.data.indexed import MissingTokenStats, read_token_stats
from tests.conftest import damaged_gzip

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder as MegatronBuilder

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def texts():
    return [p.read_text(encoding="utf-8") for p in sorted((STDLIB / "json").glob("*.py"))] + ["x = 1\n", "é = '中文'\n"]


@pytest.fixture(scope="module")
def tokenizer_dir(texts, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    train_bpe(texts, path, vocab_size=500, show_progress=False)
    return path


def write_jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "title": t[:20]}) + "\n" for t in texts))
    return path


@pytest.fixture
def corpus(texts, tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", texts)


@pytest.fixture
def shards(texts, tmp_path):
    """Four files, named so that sorted order differs from the order they are written in."""
    for name, part in zip("dbca", [texts[0:2], texts[2:3], texts[3:5], texts[5:]], strict=True):
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", part)
    return tmp_path / "in"


def in_sorted_file_order(directory):
    return [json.loads(line)["text"] for p in sorted(directory.glob("*.jsonl")) for line in p.open(encoding="utf-8")]


def megatron_reference(prefix, documents, dtype):
    builder = MegatronBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in documents:
        builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def file_bytes(prefix):
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


def final_files(directory):
    return sorted(p.name for p in Path(directory).glob("*") if p.suffix in (".bin", ".idx"))


@pytest.mark.parametrize("tasks", [1, 3])
def test_output_is_byte_identical_to_megatron_builder_on_the_same_documents(shards, tokenizer_dir, tmp_path, tasks):
    directory = shards
    result = preprocess(
        [directory],
        tmp_path / "out",
        tokenizer_dir,
        append_eod=True,
        progress=False,
        options=ExecutorOptions(tasks=tasks),
    )
    prefix = result.prefixes["text"]
    assert prefix == f"{tmp_path / 'out'}_text_document"
    tok = load_tokenizer(tokenizer_dir)
    expected = [tok.encode(t) + [tok.eod_id] for t in in_sorted_file_order(directory)]
    megatron_reference(tmp_path / "reference", expected, np.uint16)
    assert file_bytes(prefix) == file_bytes(tmp_path / "reference")
    theirs = MegatronIndexedDataset(prefix)
    assert [list(theirs[i]) for i in range(len(theirs))] == expected
    assert result.documents == len(expected) and result.tokens == sum(map(len, expected))
    assert len(result.tasks) == tasks and sum(t["documents"] for t in result.tasks) == len(expected)


def test_task_count_worker_count_and_batch_size_do_not_change_a_byte(shards, tokenizer_dir, tmp_path):
    directory = shards
    one = preprocess([directory], tmp_path / "one", tokenizer_dir, append_eod=True, progress=False)
    runs = {
        "three": ExecutorOptions(tasks=3, workers=1),
        "two-at-once": ExecutorOptions(tasks=2, workers=2),  # worker processes forked by datatrove
        "more-tasks-than-files": ExecutorOptions(tasks=6, workers=1),
    }
    for name, options in runs.items():
        other = preprocess(
            [directory],
            tmp_path / name,
            tokenizer_dir,
            append_eod=True,
            chunk_bytes=100,
            progress=False,
            options=options,
        )
        assert file_bytes(other.prefixes["text"]) == file_bytes(one.prefixes["text"]), name
        assert read_token_stats(other.prefixes["text"]) == read_token_stats(one.prefixes["text"])


def test_each_json_key_becomes_its_own_aligned_dataset(corpus, texts, tokenizer_dir, tmp_path):
    result = preprocess([corpus], tmp_path / "out", tokenizer_dir, json_keys=["text", "title"], progress=False)
    tok = load_tokenizer(tokenizer_dir)
    titles = IndexedDataset(result.prefixes["title"])
    assert [list(titles[i]) for i in range(len(titles))] == [tok.encode(t[:20]) for t in texts]
    assert len(IndexedDataset(result.prefixes["text"])) == len(titles)


def test_parquet_input_is_tokenized_like_jsonl(corpus, texts, tokenizer_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": texts}), tmp_path / "data.parquet", row_group_size=3)
    (tmp_path / "content.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    a = preprocess([tmp_path / "data.parquet"], tmp_path / "pq", tokenizer_dir, json_keys=["content"], progress=False)
    b = preprocess([tmp_path / "content.jsonl"], tmp_path / "js", tokenizer_dir, json_keys=["content"], progress=False)
    assert file_bytes(a.prefixes["content"]) == file_bytes(b.prefixes["content"])


def test_empty_texts_are_skipped_and_counted(tokenizer_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a = 1"}\n{"text": ""}\n\n{"text": "b = 2"}\n')
    result = preprocess([tmp_path / "in.jsonl"], tmp_path / "out", tokenizer_dir, append_eod=True, progress=False)
    assert (result.documents, result.empty) == (2, 1)
    assert json.loads(Path(report_path(tmp_path / "out")).read_text())["tasks"] == [
        {"documents": 2, "tokens": result.tokens, "empty": 1, "skipped": 0}
    ]


def test_malformed_line_stops_with_file_and_line_and_a_rerun_with_skip_counts_it(corpus, tokenizer_dir, tmp_path):
    lines = corpus.read_text().splitlines()
    lines.insert(6, '{"text": "unterminated')
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"{corpus}:7: malformed JSON .*--on-error skip"):
        preprocess([corpus], tmp_path / "out", tokenizer_dir, chunk_bytes=64, progress=False)
    assert not final_files(tmp_path), "a failed run leaves no dataset"
    result = preprocess([corpus], tmp_path / "out", tokenizer_dir, chunk_bytes=64, on_error="skip", progress=False)
    assert result.skipped == 1 and result.documents == len(lines) - 1


def test_missing_or_non_string_field_names_file_field_and_flag(tokenizer_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(UserError, match=r"in.jsonl: record 1 has no string field 'text'.*--json-keys"):
        preprocess([tmp_path / "in.jsonl"], tmp_path / "out", tokenizer_dir, progress=False)
    (tmp_path / "two.jsonl").write_text('{"text": "a", "title": 3}\n')
    with pytest.raises(UserError, match=r"field 'title' is a int, not a string"):
        preprocess(
            [tmp_path / "two.jsonl"], tmp_path / "o2", tokenizer_dir, json_keys=["text", "title"], progress=False
        )
    result = preprocess([tmp_path / "in.jsonl"], tmp_path / "o3", tokenizer_dir, on_error="skip", progress=False)
    assert (result.documents, result.skipped) == (1, 1)


def test_empty_corpus_is_an_error_and_leaves_no_dataset(tokenizer_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(UserError, match="no text to tokenize"):
        preprocess([tmp_path / "in.jsonl"], tmp_path / "out", tokenizer_dir, progress=False)
    assert not final_files(tmp_path)


def test_merge_subcommand_equals_preprocessing_everything_at_once(corpus, tokenizer_dir, tmp_path, capsys):
    args = ["--tokenizer", str(tokenizer_dir), "--append-eod", "--no-progress"]
    assert main(["--input", str(corpus), "--output-prefix", str(tmp_path / "shards" / "a"), *args]) == 0
    assert main(["--input", str(corpus), "--output-prefix", str(tmp_path / "shards" / "b"), *args]) == 0
    assert main(["--input", str(corpus), str(corpus), "--output-prefix", str(tmp_path / "both"), *args]) == 0
    assert main(["merge", "--input", str(tmp_path / "shards"), "--output-prefix", str(tmp_path / "merged")]) == 0
    assert file_bytes(tmp_path / "merged") == file_bytes(tmp_path / "both_text_document")


def test_outputs_carry_token_stats_and_the_stats_subcommand_writes_them_for_megatron_datasets(
    shards, tokenizer_dir, tmp_path, capsys
):
    directory = shards
    options = ExecutorOptions(tasks=3)
    prefix = preprocess([directory], tmp_path / "out", tokenizer_dir, append_eod=True, progress=False, options=options)
    prefix = prefix.prefixes["text"]
    ours = read_token_stats(prefix)
    tok = load_tokenizer(tokenizer_dir)
    every_id = [i for t in in_sorted_file_order(directory) for i in tok.encode(t)] + [tok.eod_id]
    assert ours.max_token_id == max(every_id) and ours.min_token_id == min(every_id)
    assert ours == IndexedDataset(prefix).scan_token_stats() and ours.num_tokens > 1000
    megatron_reference(tmp_path / "theirs", [d.tolist() for d in IndexedDataset(prefix)[:]], np.uint16)
    with pytest.raises(MissingTokenStats):
        read_token_stats(tmp_path / "theirs")
    assert main(["stats", "--input", str(tmp_path / "theirs.idx")]) == 0
    assert read_token_stats(tmp_path / "theirs") == ours
    assert f"wrote {tmp_path / 'theirs'}.stats.json: {ours.num_tokens} tokens" in capsys.readouterr().out


KILLING_LAUNCHER = """
import os, signal, sys
from data_tools import preprocess, preprocess_steps

class KilledMidway(preprocess_steps.IndexedDatasetWriter):
    # the command and every process it started die at once (SIGKILL, as when a node is lost)
    # inside task 2, after 2 documents
    def add_documents(self, tokens, lengths):
        super().add_documents(tokens, lengths)
        if os.path.basename(self.prefix).startswith("00002-") and self.num_documents >= 2:
            os.killpg(os.getpgid(0), signal.SIGKILL)

preprocess_steps.IndexedDatasetWriter = KilledMidway
sys.exit(preprocess.main(sys.argv[1:]))
"""


def test_a_killed_run_reruns_only_the_unfinished_tasks(shards, tokenizer_dir, tmp_path):
    directory = shards
    out = tmp_path / "out"
    argv = ["--input", str(directory), "--output-prefix", str(out), "--tokenizer", str(tokenizer_dir)]
    argv += ["--append-eod", "--chunk-bytes", "1", "--tasks", "3", "--workers", "1", "--no-progress"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLING_LAUNCHER, *argv], capture_output=True, text=True, start_new_session=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    tokenize_dir = Path(f"{out}.datatrove/tokenize")
    assert sorted(p.name for p in (tokenize_dir / "completions").iterdir()) == ["00000", "00001"]
    assert not final_files(tmp_path), "no final dataset before every task finished"
    assert (tokenize_dir / "parts" / "00002-00000_text_document.bin").stat().st_size > 0, "killed while writing"
    assert not (tokenize_dir / "parts" / "00002-00000_text_document.idx").exists(), "the killed part has no index"
    finished = {
        p: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in [*(tokenize_dir / "parts").glob("0000[01]*"), *(tokenize_dir / "logs").glob("task_0000[01].log")]
    }

    rerun = subprocess.run([sys.executable, "-m", "data_tools.preprocess", *argv], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(finished) == 13  # 2 + 1 parts (.bin, .idx, .stats.json), 2 manifests, 2 logs
    for path, identity in finished.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, f"{path} was written again"
    one = preprocess([directory], tmp_path / "whole", tokenizer_dir, append_eod=True, progress=False)
    assert file_bytes(f"{out}_text_document") == file_bytes(one.prefixes["text"])
    assert read_token_stats(f"{out}_text_document") == read_token_stats(one.prefixes["text"])


def test_cli_bad_input_is_one_error_line_and_exit_2(tokenizer_dir, tmp_path, capsys):
    out = ["--output-prefix", str(tmp_path / "o")]
    assert main(["--input", str(tmp_path / "none.jsonl"), *out, "--tokenizer", str(tokenizer_dir)]) == 2
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    assert main(["--input", str(tmp_path), *out, "--tokenizer", str(tmp_path / "notok")]) == 2
    assert main(["--input", str(tmp_path), *out, "--tokenizer", str(tokenizer_dir), "--tasks", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "matches no files" in err[0] and "tokenizer" in err[1] and "--tasks 0" in err[2]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--append-eod" in help_text and "--executor" in help_text


@pytest.mark.parametrize("how", ["truncated", "bitflip", "crc"])
def test_a_damaged_gzip_input_is_an_error_line_naming_the_file_and_leaves_no_dataset(
    tokenizer_dir, texts, tmp_path, capsys, how
):
    path = tmp_path / "in" / "shard.jsonl.gz"
    path.parent.mkdir()
    damaged_gzip(path, [{"text": t} for t in texts] * 40, how)
    argv = ["--input", str(path), "--output-prefix", str(tmp_path / "out" / "code"), "--tokenizer", str(tokenizer_dir)]
    argv += ["--chunk-bytes", "4096", "--on-error", "skip", "--no-progress"]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}:") and "truncated or corrupt" in errors[0]
    assert not final_files(tmp_path / "out"), "no .bin/.idx"
    assert not list((tmp_path / "out").glob("code.datatrove/*/parts/*.bin")), "no partial part either"
