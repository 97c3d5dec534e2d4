"""Tokenizers: a codegen-350M-mono style byte-level BPE, a sentencepiece alternative, one interface."""

import json
import sysconfig
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from megaphi.vocab import padded_vocab_size
from data_tools.tokenizer import (
    EOD_TOKEN,
    WHITESPACE_RUNS,
    TokenizerError,
    load_tokenizer,
    main,
    train_bpe,
    train_sentencepiece,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE = 'class Point:\n    """A point."""\n\n    def norm(self) -> float:\n\t\treturn (self.x ** 2 + self.y ** 2) ** 0.5  # é, 中文\n'


@pytest.fixture(scope="module")
def texts():
    return [p.read_text(encoding="utf-8") for p in sorted((STDLIB / "json").glob("*.py"))] + [CODE]


@pytest.fixture(scope="module")
def bpe_dir(texts, tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe")
    train_bpe(texts, path, vocab_size=600, show_progress=False)
    return path


def test_trained_bpe_loads_with_transformers_autotokenizer_and_encodes_identically(bpe_dir, texts):
    ours = load_tokenizer(bpe_dir)
    theirs = AutoTokenizer.from_pretrained(str(bpe_dir))
    assert type(theirs).__name__.startswith("GPT2Tokenizer")
    assert theirs.eos_token == EOD_TOKEN and theirs.eos_token_id == ours.eod_id
    assert len(theirs) == ours.vocab_size
    for text in texts[:3] + [CODE]:
        assert theirs.encode(text) == ours.encode(text)


def test_bpe_round_trips_code_byte_for_byte(bpe_dir, texts):
    tok = load_tokenizer(bpe_dir)
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


def test_bpe_mirrors_codegen_vocabulary_layout(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    vocab = json.loads((bpe_dir / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    assert added[EOD_TOKEN] == tok.eod_id == 0
    # 600 BPE entries (with <|endoftext|>) then 30 space runs and 8 tab runs: 638, as codegen's 50257 + 38
    assert tok.vocab_size == 600 + 38
    assert all(run in added for run in WHITESPACE_RUNS) and len(WHITESPACE_RUNS) == 38


@pytest.mark.parametrize("run", [" " * 2, " " * 8, " " * 31, "\t" * 2, "\t" * 9])
def test_whitespace_runs_are_single_tokens(bpe_dir, run):
    tok = load_tokenizer(bpe_dir)
    assert len(tok.encode(run)) == 1
    assert tok.decode(tok.encode(run)) == run


def test_longer_whitespace_runs_take_the_longest_added_token_first(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    ids = tok.encode(" " * 40)
    assert ids[0] == tok.encode(" " * 31)[0] and tok.decode(ids) == " " * 40


def test_encode_batch_equals_encode_one_by_one(bpe_dir, texts):
    tok = load_tokenizer(bpe_dir)
    assert tok.encode_batch(texts[:4]) == [tok.encode(t) for t in texts[:4]]


def test_model_vocab_pads_to_multiples_of_128_times_tensor_parallel():
    assert padded_vocab_size(50295) == 50304
    # phi-1's 51200 is codegen's 50295 padded for up to 8-way tensor parallelism
    assert padded_vocab_size(50295, tensor_parallel_size=8) == 51200
    assert padded_vocab_size(51200, tensor_parallel_size=4) == 51200


def test_sentencepiece_alternative_has_the_same_interface(texts, tmp_path):
    tok = train_sentencepiece(texts, tmp_path / "spm", vocab_size=400)
    assert load_tokenizer(tmp_path / "spm").vocab_size == tok.vocab_size == 400
    assert load_tokenizer(tmp_path / "spm" / "tokenizer.model").eod_id == tok.eod_id
    assert tok.eod_id == tok._backend.piece_to_id(EOD_TOKEN)
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch([CODE, "x = 1\n"]) == [tok.encode(CODE), tok.encode("x = 1\n")]
    assert len(tok.encode(" " * 8)) == 1


def test_load_tokenizer_names_what_is_missing(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist.*data_tools.tokenizer train"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="cannot load a tokenizer from"):
        load_tokenizer(tmp_path / "empty")


def test_tokenizer_without_an_end_of_document_token_is_refused(texts, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    (tmp_path / "noeod").mkdir()
    backend.save(str(tmp_path / "noeod" / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="no end-of-document token '<|endoftext|>'"):
        load_tokenizer(tmp_path / "noeod")


def test_cli_trains_and_reports_vocab_and_padded_model_vocab(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(CODE * 3)
    assert (
        main(["train", "--input", str(tmp_path / "src"), "--output", str(tmp_path / "tok"), "--vocab-size", "300"]) == 0
    )
    assert main(["info", str(tmp_path / "tok"), "--tensor-parallel-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "vocab size 338" in out and "model vocab padded to 512 (multiple of 256" in out


def test_cli_refuses_an_empty_corpus_with_one_error_line(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n')
    assert main(["train", "--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training corpus is empty" in err[0]


def test_a_damaged_tokenizer_file_or_a_zero_tp_size_is_one_error_line(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{")
    assert main(["info", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bad' / 'tokenizer.json'} cannot be read") and err.count("\n") == 1
    assert main(["info", str(tmp_path / "bad"), "--tensor-parallel-size", "0"]) == 2
    assert capsys.readouterr().err == "error: --tensor-parallel-size must be at least 1, got 0\n"
