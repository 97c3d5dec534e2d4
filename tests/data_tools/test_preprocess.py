"""Preprocessing writes exactly what Megatron's IndexedDatasetBuilder writes for the same tokens."""

import json
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.jsonl import MalformedRecordError
from data_tools.preprocess import EmptyCorpusError, main, preprocess
from data_tools.tokenizer import load_tokenizer, train_bpe
from megaphi.data import IndexedDataset
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


@pytest.fixture
def corpus(texts, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "title": t[:20]}) + "\n" for t in texts))
    return path


def megatron_reference(prefix, documents, dtype):
    builder = MegatronBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in documents:
        builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def file_bytes(prefix):
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


def test_output_is_byte_identical_to_megatron_builder_on_the_same_tokens(corpus, texts, tokenizer_dir, tmp_path):
    result = preprocess([corpus], tmp_path / "out", tokenizer_dir, append_eod=True, progress=False)
    prefix = result.prefixes["text"]
    assert prefix == f"{tmp_path / 'out'}_text_document"
    tok = load_tokenizer(tokenizer_dir)
    expected = [tok.encode(t) + [tok.eod_id] for t in texts]
    megatron_reference(tmp_path / "reference", expected, np.uint16)
    assert file_bytes(prefix) == file_bytes(tmp_path / "reference")
    theirs = MegatronIndexedDataset(prefix)
    assert [list(theirs[i]) for i in range(len(theirs))] == expected
    assert result.documents == len(texts) and result.tokens == sum(map(len, expected))


def test_small_chunks_split_at_line_boundaries_give_the_same_dataset(corpus, tokenizer_dir, tmp_path):
    whole = preprocess([corpus], tmp_path / "whole", tokenizer_dir, progress=False).prefixes["text"]
    chunked = preprocess([corpus], tmp_path / "chunked", tokenizer_dir, chunk_bytes=100, progress=False).prefixes[
        "text"
    ]
    assert file_bytes(whole) == file_bytes(chunked)


def test_two_worker_processes_give_the_same_bytes_as_one(corpus, tokenizer_dir, tmp_path):
    one = preprocess(
        [corpus, corpus], tmp_path / "one", tokenizer_dir, append_eod=True, chunk_bytes=5000, progress=False
    )
    two = preprocess(
        [corpus, corpus], tmp_path / "two", tokenizer_dir, append_eod=True, chunk_bytes=5000, workers=2, progress=False
    )
    assert file_bytes(one.prefixes["text"]) == file_bytes(two.prefixes["text"])


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


def test_malformed_line_stops_with_file_and_line_even_across_chunks(corpus, tokenizer_dir, tmp_path):
    lines = corpus.read_text().splitlines()
    lines.insert(6, '{"text": "unterminated')
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRecordError, match=rf"{corpus}:7: malformed JSON .*--on-error skip"):
        preprocess([corpus], tmp_path / "out", tokenizer_dir, chunk_bytes=64, progress=False)
    assert not list(tmp_path.glob("out*")), "a failed run leaves no partial dataset"
    result = preprocess([corpus], tmp_path / "out", tokenizer_dir, chunk_bytes=64, on_error="skip", progress=False)
    assert result.read.skipped == 1 and result.documents == len(lines) - 1


def test_missing_or_non_string_field_names_file_line_and_field(tokenizer_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(MalformedRecordError, match=r"in.jsonl:2: field 'text' is missing"):
        preprocess([tmp_path / "in.jsonl"], tmp_path / "out", tokenizer_dir, progress=False)
    (tmp_path / "in.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(MalformedRecordError, match=r"in.jsonl:1: field 'text' is a int"):
        preprocess([tmp_path / "in.jsonl"], tmp_path / "out", tokenizer_dir, progress=False)


def test_empty_corpus_is_an_error_and_leaves_no_files(tokenizer_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(EmptyCorpusError, match="no text to tokenize"):
        preprocess([tmp_path / "in.jsonl"], tmp_path / "out", tokenizer_dir, progress=False)
    assert not list(tmp_path.glob("out*"))


def test_merge_subcommand_equals_preprocessing_everything_at_once(corpus, tokenizer_dir, tmp_path, capsys):
    args = ["--tokenizer", str(tokenizer_dir), "--append-eod", "--no-progress"]
    assert main(["--input", str(corpus), "--output-prefix", str(tmp_path / "shards" / "a"), *args]) == 0
    assert main(["--input", str(corpus), "--output-prefix", str(tmp_path / "shards" / "b"), *args]) == 0
    assert main(["--input", str(corpus), str(corpus), "--output-prefix", str(tmp_path / "both"), *args]) == 0
    assert main(["merge", "--input", str(tmp_path / "shards"), "--output-prefix", str(tmp_path / "merged")]) == 0
    assert file_bytes(tmp_path / "merged") == file_bytes(tmp_path / "both_text_document")


def test_outputs_carry_token_stats_and_the_stats_subcommand_writes_them_for_megatron_datasets(
    corpus, tokenizer_dir, tmp_path, capsys
):
    prefix = preprocess([corpus], tmp_path / "out", tokenizer_dir, append_eod=True, progress=False).prefixes["text"]
    ours = read_token_stats(prefix)
    assert ours == IndexedDataset(prefix).scan_token_stats() and ours.num_tokens > 1000
    megatron_reference(tmp_path / "theirs", [d.tolist() for d in IndexedDataset(prefix)[:]], np.uint16)
    with pytest.raises(MissingTokenStats):
        read_token_stats(tmp_path / "theirs")
    assert main(["stats", "--input", str(tmp_path / "theirs.idx")]) == 0
    assert read_token_stats(tmp_path / "theirs") == ours
    assert f"wrote {tmp_path / 'theirs'}.stats.json: {ours.num_tokens} tokens" in capsys.readouterr().out


def test_cli_bad_input_is_one_error_line_and_exit_2(tokenizer_dir, tmp_path, capsys):
    assert (
        main(
            [
                "--input",
                str(tmp_path / "none.jsonl"),
                "--output-prefix",
                str(tmp_path / "o"),
                "--tokenizer",
                str(tokenizer_dir),
            ]
        )
        == 2
    )
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    assert (
        main(["--input", str(tmp_path), "--output-prefix", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "notok")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "matches no files" in err[0] and "tokenizer" in err[1]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--append-eod" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["truncated", "bitflip", "crc"])
def test_a_damaged_gzip_input_is_one_error_line_naming_the_file_and_leaves_no_dataset(
    tokenizer_dir, texts, tmp_path, capsys, how
):
    path = tmp_path / "in" / "shard.jsonl.gz"
    path.parent.mkdir()
    damaged_gzip(path, [{"text": t} for t in texts] * 40, how)
    argv = [
        "--input",
        str(path),
        "--output-prefix",
        str(tmp_path / "out" / "code"),
        "--tokenizer",
        str(tokenizer_dir),
        "--chunk-bytes",
        "4096",
        "--on-error",
        "skip",
        "--no-progress",
    ]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {path}:") and "truncated or corrupt" in line
    assert not list((tmp_path / "out").glob("*")), "no partial .bin/.idx"
