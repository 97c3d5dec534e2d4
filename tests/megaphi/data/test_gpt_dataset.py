"""The GPT dataset packs documents into seq_len+1 windows, shuffles them by seed, and caches its indices."""

import json
import os
import pickle
import warnings

import numpy as np
import pytest

from megaphi.data.gpt_dataset import DatasetConfigError, GPTDataset
from megaphi.data.indexed import IndexedDataset
from tests.distributed import spawn
from tests.megaphi.data.numbered_corpus import random_lengths, write_numbered_corpus

SEQ = 16


@pytest.fixture
def corpus(tmp_path):
    prefix = str(tmp_path / "data" / "corpus")
    documents = write_numbered_corpus(prefix, random_lengths(120, seed=1))
    return prefix, documents


def stream_of(dataset, documents):
    """The concatenated token stream in the dataset's document order."""
    return np.concatenate([documents[d] for d in dataset.document_index])


@pytest.mark.parametrize("seq_len,num_samples,epochs", [(SEQ, None, 1), (SEQ, 700, 4), (13, None, 1), (13, 700, 3)])
def test_every_sample_is_a_window_of_seq_len_plus_one_consecutive_stream_tokens(corpus, seq_len, num_samples, epochs):
    prefix, documents = corpus
    ds = GPTDataset(prefix, seq_len=seq_len, seed=3, num_samples=num_samples)
    assert ds.num_epochs == epochs
    stream = stream_of(ds, documents)
    for k in range(len(ds)):
        np.testing.assert_array_equal(ds.window(k), stream[k * seq_len : (k + 1) * seq_len + 1])
    sample = ds[0]
    assert sample.dtype == np.int64 and sample.shape == (seq_len + 1,)


def test_consecutive_windows_overlap_by_exactly_one_token(corpus):
    prefix, _ = corpus
    ds = GPTDataset(prefix, seq_len=SEQ, seed=3)
    for k in range(len(ds) - 1):
        assert ds.window(k)[-1] == ds.window(k + 1)[0]
        assert not set(ds.window(k)[:-1]) & set(ds.window(k + 1))


def test_one_epoch_predicts_every_token_once_except_the_final_partial_window(corpus):
    prefix, documents = corpus
    ds = GPTDataset(prefix, seq_len=SEQ, seed=3)
    total = sum(len(d) for d in documents)
    assert len(ds) == (total - 1) // SEQ
    inputs = np.concatenate([ds[i][:-1] for i in range(len(ds))])  # shuffled order
    assert len(np.unique(inputs)) == len(inputs) == len(ds) * SEQ
    missing = np.setdiff1d(np.arange(total), inputs)
    # only the tail of the stream that cannot fill another window is left out
    np.testing.assert_array_equal(np.sort(missing), np.sort(stream_of(ds, documents)[len(ds) * SEQ :]))


def test_each_epoch_is_a_fresh_permutation_and_its_samples_come_before_the_next_epochs(corpus):
    prefix, documents = corpus
    n_docs, total = len(documents), sum(len(d) for d in documents)
    wanted = 3 * total // SEQ + 1  # one more than three epochs of the stream hold
    ds = GPTDataset(prefix, seq_len=SEQ, seed=5, num_samples=wanted)
    assert ds.num_epochs == 4 and len(ds) >= wanted
    epochs = ds.document_index.reshape(4, n_docs)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(n_docs))
    assert not np.array_equal(epochs[0], epochs[1])
    # samples are shuffled only within the epoch in which they start
    for e in range(4):
        begin, end = -(-e * total // SEQ), min(len(ds), -(-(e + 1) * total // SEQ))
        np.testing.assert_array_equal(np.sort(ds.shuffle_index[begin:end]), np.arange(begin, end))
    # the first epoch's steps predict every token once (its last window runs into the next epoch)
    first_epoch = -(-total // SEQ)
    inputs = np.concatenate([ds[i][:-1] for i in range(first_epoch)])
    np.testing.assert_array_equal(np.sort(inputs), np.sort(stream_of(ds, documents)[: first_epoch * SEQ]))
    assert np.isin(np.arange(total), inputs).all()


def test_order_is_a_deterministic_function_of_the_seed(corpus, tmp_path):
    prefix, _ = corpus
    a = GPTDataset(prefix, seq_len=SEQ, seed=11, cache_dir=tmp_path / "a")
    b = GPTDataset(prefix, seq_len=SEQ, seed=11, cache_dir=tmp_path / "b")
    c = GPTDataset(prefix, seq_len=SEQ, seed=12, cache_dir=tmp_path / "c")
    assert a.cache_status == b.cache_status == "built"

    def samples(ds):
        return np.stack([ds[i] for i in range(len(ds))])

    np.testing.assert_array_equal(samples(a), samples(b))
    assert len(a) == len(c) and not np.array_equal(samples(a), samples(c))


@pytest.mark.slow
def test_one_epoch_is_identical_to_megatron_core_gpt_dataset(corpus, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.gpt_dataset import GPTDataset as MegatronGPTDataset
        from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
        from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
        from megatron.core.datasets.utils import Split

    class Tokenizer:  # the fields megatron-core's GPTDataset reads
        vocab_size, eod, pad = 100_000, 0, -1
        unique_identifiers = {"class": "Tokenizer"}

    prefix, documents = corpus
    config = GPTDatasetConfig(
        random_seed=9,
        sequence_length=SEQ,
        tokenizer=Tokenizer(),
        split="1,0,0",
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=str(tmp_path / "megatron-cache"),
    )
    begin, end = 10, 110
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = MegatronGPTDataset(
            MegatronIndexedDataset(prefix), prefix, np.arange(begin, end, dtype=np.int32), None, Split.train, config
        )
    ours = GPTDataset(prefix, seq_len=SEQ, seed=9, documents=(begin, end))
    np.testing.assert_array_equal(ours.document_index, reference.document_index)
    np.testing.assert_array_equal(ours.sample_index, reference.sample_index)
    np.testing.assert_array_equal(ours.shuffle_index, reference.shuffle_index)
    assert len(ours) == len(reference)
    for i in range(len(ours)):
        item = reference[i]
        np.testing.assert_array_equal(ours[i][:-1], item["tokens"].numpy())
        np.testing.assert_array_equal(ours[i][1:], item["labels"].numpy())


def test_document_range_uses_only_its_documents(corpus):
    prefix, documents = corpus
    ds = GPTDataset(prefix, seq_len=SEQ, seed=1, documents=(20, 60), name="valid")
    allowed = np.concatenate(documents[20:60])
    assert np.isin(np.concatenate([ds[i] for i in range(len(ds))]), allowed).all()
    np.testing.assert_array_equal(np.sort(ds.document_index), np.arange(20, 60))


def test_empty_documents_are_stepped_over(tmp_path):
    prefix = str(tmp_path / "gaps")
    lengths = [5, 0, 0, 9, 0, 30, 1, 0, 17]
    documents = write_numbered_corpus(prefix, lengths)
    ds = GPTDataset(prefix, seq_len=4, seed=0)
    stream = stream_of(ds, documents)
    for k in range(len(ds)):
        np.testing.assert_array_equal(ds.window(k), stream[k * 4 : k * 4 + 5])


def test_second_build_loads_the_cache_instead_of_rebuilding(corpus):
    prefix, _ = corpus
    first = GPTDataset(prefix, seq_len=SEQ, seed=2)
    cache_files = sorted(os.listdir(os.path.join(os.path.dirname(prefix), "index-cache")))
    mtimes = {f: os.stat(os.path.join(os.path.dirname(prefix), "index-cache", f)).st_mtime_ns for f in cache_files}
    second = GPTDataset(prefix, seq_len=SEQ, seed=2)
    assert (first.cache_status, second.cache_status) == ("built", "loaded")
    assert sorted(os.listdir(os.path.join(os.path.dirname(prefix), "index-cache"))) == cache_files
    assert mtimes == {
        f: os.stat(os.path.join(os.path.dirname(prefix), "index-cache", f)).st_mtime_ns for f in cache_files
    }
    assert isinstance(second.shuffle_index, np.memmap)
    np.testing.assert_array_equal(first.shuffle_index, second.shuffle_index)


@pytest.mark.parametrize("change", [dict(seq_len=8), dict(seed=3), dict(num_samples=1000), dict(documents=(0, 100))])
def test_any_parameter_change_builds_a_new_index(corpus, change):
    prefix, _ = corpus
    base = dict(seq_len=SEQ, seed=2, num_samples=None, documents=None)
    assert GPTDataset(prefix, **base).cache_status == "built"
    changed = GPTDataset(prefix, **{**base, **change})
    assert changed.cache_status == "built"
    assert GPTDataset(prefix, **{**base, **change}).cache_status == "loaded"


def test_rewritten_data_is_not_served_from_the_old_cache(tmp_path):
    prefix = str(tmp_path / "corpus")
    write_numbered_corpus(prefix, random_lengths(50, seed=1))
    GPTDataset(prefix, seq_len=SEQ, seed=0)
    documents = write_numbered_corpus(prefix, random_lengths(50, seed=2))
    ds = GPTDataset(prefix, seq_len=SEQ, seed=0)
    assert ds.cache_status == "built"
    stream = stream_of(ds, documents)
    np.testing.assert_array_equal(ds.window(len(ds) - 1), stream[(len(ds) - 1) * SEQ : len(ds) * SEQ + 1])


def cache_entry(ds):
    return ds._cache


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_cache_file_is_detected_and_rebuilt(corpus, damage):
    prefix, _ = corpus
    good = GPTDataset(prefix, seq_len=SEQ, seed=4)
    expected = np.stack([good[i] for i in range(len(good))])
    path = cache_entry(good).array_path("sample_index")
    del good
    if damage == "truncate":
        os.truncate(path, os.path.getsize(path) - 8)
    elif damage == "flip":
        with open(path, "r+b") as f:
            f.seek(-3, os.SEEK_END)
            byte = f.read(1)
            f.seek(-3, os.SEEK_END)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        os.remove(path)
    again = GPTDataset(prefix, seq_len=SEQ, seed=4)
    assert again.cache_status.startswith("rebuilt: ")
    assert "sample_index" in again.cache_status
    np.testing.assert_array_equal(np.stack([again[i] for i in range(len(again))]), expected)


def test_cache_entry_describing_other_parameters_is_detected_and_rebuilt(corpus):
    prefix, _ = corpus
    target = GPTDataset(prefix, seq_len=SEQ, seed=4)
    expected = np.array(target.shuffle_index)
    other = GPTDataset(prefix, seq_len=SEQ, seed=5)
    # an entry whose files were overwritten by another build (copied caches, hash collision)
    for key in ("document_index", "sample_index", "shuffle_index"):
        os.replace(cache_entry(other).array_path(key), cache_entry(target).array_path(key))
    os.replace(cache_entry(other).description_path, cache_entry(target).description_path)
    with open(cache_entry(target).description_path) as f:
        assert json.load(f)["params"]["seed"] == 5
    again = GPTDataset(prefix, seq_len=SEQ, seed=4)
    assert again.cache_status.startswith("rebuilt: ") and "other parameters" in again.cache_status
    np.testing.assert_array_equal(again.shuffle_index, expected)


def test_pickles_small_and_reopens_the_same_samples(corpus):
    prefix, _ = corpus
    ds = GPTDataset(prefix, seq_len=SEQ, seed=4, num_samples=2000)
    blob = pickle.dumps(ds)
    assert len(blob) < 4096  # paths, not the index arrays (DataLoader workers get this)
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy[7], ds[7])
    np.testing.assert_array_equal(copy[len(ds) - 1], ds[len(ds) - 1])


def test_bad_parameters_raise_one_clear_error(corpus):
    prefix, documents = corpus
    with pytest.raises(DatasetConfigError, match="document range"):
        GPTDataset(prefix, seq_len=SEQ, documents=(0, len(documents) + 1))
    with pytest.raises(DatasetConfigError, match="fewer than one sample"):
        GPTDataset(prefix, seq_len=10**6)
    with pytest.raises(DatasetConfigError, match="seq_len"):
        GPTDataset(prefix, seq_len=0)
    with pytest.raises(ValueError, match="does not exist"):
        GPTDataset(prefix + "-missing", seq_len=SEQ)
    with pytest.raises(IndexError):
        GPTDataset(prefix, seq_len=SEQ)[10**6]
    blocker = os.path.join(os.path.dirname(prefix), "not-a-directory")
    open(blocker, "w").close()
    with pytest.raises(DatasetConfigError, match="cannot write the dataset index cache"):
        GPTDataset(prefix, seq_len=SEQ, cache_dir=os.path.join(blocker, "cache"))


def _build_on_every_rank(rank, world_size, prefix, results_dir):
    ds = GPTDataset(IndexedDataset(prefix), seq_len=SEQ, seed=8, num_samples=500)
    np.save(os.path.join(results_dir, f"rank{rank}.npy"), np.stack([ds[i] for i in range(0, len(ds), 7)]))
    with open(os.path.join(results_dir, f"rank{rank}.status"), "w") as f:
        f.write(ds.cache_status)


@pytest.mark.slow
def test_indices_are_built_once_by_rank_zero_and_loaded_by_the_others(corpus, tmp_path):
    prefix, _ = corpus
    spawn(_build_on_every_rank, 2, prefix, str(tmp_path))
    statuses = [open(tmp_path / f"rank{r}.status").read() for r in range(2)]
    assert statuses == ["built", "loaded"]
    np.testing.assert_array_equal(np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy"))
