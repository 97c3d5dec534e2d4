"""Train/validation datasets: Megatron's split rounding, document-range splits, weighted blends."""

import warnings

import numpy as np
import pytest

from megaphi.data.blended import BlendedDataset
from megaphi.data.builder import build_train_valid_datasets, parse_data_paths, parse_split
from megaphi.data.gpt_dataset import DatasetConfigError, GPTDataset
from tests.megaphi.data.numbered_corpus import random_lengths, write_numbered_corpus


@pytest.mark.parametrize("split", ["969,30,1", "99,1,0", "98,2", "1,1,1", "100", "0.9,0.05,0.05"])
@pytest.mark.parametrize("num_documents", [1, 10, 997, 123457])
def test_fraction_split_matches_megatron_core(split, num_documents):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_config import (
            convert_split_vector_to_split_matrix,
            parse_and_normalize_split,
        )
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    expected = [
        (0, 0) if m is None else (int(round(m[0] * num_documents)), int(round(m[1] * num_documents))) for m in matrix
    ]
    ours = parse_split(split, num_documents)
    for (begin, end), (want_begin, want_end) in zip(ours, expected, strict=True):
        assert end - begin == want_end - want_begin
        if end > begin:
            assert (begin, end) == (want_begin, want_end)


def test_range_split_takes_the_given_documents():
    assert parse_split("0:900,900:990,990:", 1000) == [(0, 900), (900, 990), (990, 1000)]
    assert parse_split("100:1000,0:100", 1000) == [(100, 1000), (0, 100), (1000, 1000)]
    with pytest.raises(DatasetConfigError, match="overlapping"):
        parse_split("0:600,500:1000", 1000)
    with pytest.raises(DatasetConfigError, match="outside"):
        parse_split("0:2000", 1000)
    with pytest.raises(DatasetConfigError, match="one to three parts"):
        parse_split("1,1,1,1", 1000)
    with pytest.raises(DatasetConfigError, match="must be numbers"):
        parse_split("a,b", 1000)


def test_data_paths_accept_megatrons_forms():
    assert parse_data_paths("data/a") == [(None, "data/a")]
    assert parse_data_paths(["a", "b"]) == [(None, "a"), (None, "b")]
    assert parse_data_paths(["0.7", "a", "0.3", "b"]) == [(0.7, "a"), (0.3, "b")]
    assert parse_data_paths([(2, "a"), (1, "b")]) == [(2.0, "a"), (1.0, "b")]
    with pytest.raises(DatasetConfigError, match="alternating weight and prefix"):
        parse_data_paths(["0.7", "a", "b"])


def test_data_path_weights_may_be_numbers_as_yaml_reads_them():
    assert parse_data_paths([0.7, "a", 0.3, "b"]) == [(0.7, "a"), (0.3, "b")]
    assert parse_data_paths(parse_data_paths(["a", "b"])) == [(None, "a"), (None, "b")]


@pytest.mark.parametrize(
    "paths, message",
    [
        ([(0.7, "a"), "b"], "give \\(weight, prefix\\) pairs only"),
        ([(0.7, "a", "extra")], "give \\(weight, prefix\\) pairs only"),
        ([(0.7, "a"), (None, "b")], "give every prefix a weight, or none"),
    ],
)
def test_data_path_pairs_that_do_not_fit_one_form_are_one_clear_error(paths, message):
    with pytest.raises(DatasetConfigError, match=message):
        parse_data_paths(paths)


def test_train_and_valid_come_from_disjoint_documents(tmp_path):
    prefix = str(tmp_path / "corpus")
    documents = write_numbered_corpus(prefix, random_lengths(200, seed=4))
    train, valid = build_train_valid_datasets(prefix, seq_len=8, seed=3, train_samples=500, split="90,10")
    assert isinstance(train, GPTDataset) and train.documents == (0, 180) and len(train) >= 500
    assert valid.documents == (180, 200) and valid.num_epochs == 1
    train_tokens = np.concatenate([train[i] for i in range(len(train))])
    valid_tokens = np.concatenate([valid[i] for i in range(len(valid))])
    assert np.isin(train_tokens, np.concatenate(documents[:180])).all()
    assert np.isin(valid_tokens, np.concatenate(documents[180:])).all()


def test_weighted_blend_draws_each_datasets_share(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_numbered_corpus(a, random_lengths(100, seed=1))
    write_numbered_corpus(b, random_lengths(100, seed=2))
    train, valid = build_train_valid_datasets(
        ["0.8", a, "0.2", b], seq_len=8, train_samples=1000, valid_samples=50, split="95,5,0"
    )
    assert isinstance(train, BlendedDataset) and len(train) == 1000
    assert list(train.counts) == [800, 200]
    assert list(valid.counts) == [40, 10]
    # the blend's samples really come from the dataset it says
    for i in range(0, 1000, 37):
        d = int(train.dataset_index[i])
        np.testing.assert_array_equal(train[i], train.datasets[d][int(train.dataset_sample_index[i])])


def test_blend_weights_are_checked_and_need_a_sample_count(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_numbered_corpus(a, random_lengths(50, seed=1))
    write_numbered_corpus(b, random_lengths(50, seed=2))
    for weights in (("-1", "2"), ("0", "0")):
        with pytest.raises(DatasetConfigError, match="blend weights must be finite, non-negative"):
            parse_data_paths([weights[0], a, weights[1], b])
    with pytest.raises(DatasetConfigError, match="blend weights need a sample count"):
        build_train_valid_datasets(["0.9", a, "0.1", b], seq_len=8, split="100,0,0")
    train, valid = build_train_valid_datasets(["0.9", a, "0.1", b], seq_len=8, train_samples=100, valid_samples=0)
    assert list(train.counts) == [90, 10] and valid is None  # zero validation samples asked: none built


def test_unweighted_validation_blend_is_one_pass_over_every_dataset(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_numbered_corpus(a, random_lengths(100, seed=1))
    write_numbered_corpus(b, random_lengths(300, seed=2))
    _, valid = build_train_valid_datasets([a, b], seq_len=8, train_samples=100, split="80,20")
    assert list(valid.counts) == [len(d) for d in valid.datasets]


def test_a_split_without_documents_is_an_error_or_absent(tmp_path):
    prefix = str(tmp_path / "corpus")
    write_numbered_corpus(prefix, random_lengths(20, seed=1))
    train, valid = build_train_valid_datasets(prefix, seq_len=8, train_samples=10, split="100,0,0")
    assert valid is None
    with pytest.raises(DatasetConfigError, match="50 valid samples requested"):
        build_train_valid_datasets(prefix, seq_len=8, train_samples=10, valid_samples=50, split="100,0,0")
    with pytest.raises(DatasetConfigError, match="no train documents"):
        build_train_valid_datasets(prefix, seq_len=8, split="0,1,0")


def test_cli_prebuilds_the_indices_a_run_will_load(tmp_path, capsys):
    from megaphi.data.builder import main

    prefix = str(tmp_path / "corpus")
    write_numbered_corpus(prefix, random_lengths(100, seed=1))
    args = ["--data-path", prefix, "--seq-len", "8", "--train-samples", "300", "--split", "90,10"]
    assert main(args) == 0
    assert "index built" in capsys.readouterr().out
    train, _ = build_train_valid_datasets(prefix, seq_len=8, train_samples=300, split="90,10")
    assert train.cache_status == "loaded"
    assert main(["--data-path", str(tmp_path / "missing"), "--seq-len", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not exist" in err and len(err.splitlines()) == 1
