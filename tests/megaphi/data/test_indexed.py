"""The indexed dataset is Megatron-LM's MMIDIDX format, byte for byte, and refuses bad files."""

import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch

from megaphi.data import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter, best_dtype, merge_datasets
from megaphi.data.indexed import MissingTokenStats, TokenStats, read_token_stats, stats_path

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder as MegatronBuilder


def random_documents(n, vocab, seed=0, max_len=60):
    rng = np.random.default_rng(seed)
    # zero-length documents are legal and exercise the pointer arithmetic
    return [rng.integers(0, vocab, rng.integers(0, max_len)) for _ in range(n)]


def write_megaphi(prefix, documents, dtype):
    with IndexedDatasetWriter(prefix, dtype) as writer:
        half = len(documents) // 2
        for doc in documents[:half]:
            writer.add_document(doc)
        writer.add_documents(np.concatenate(documents[half:]), [len(d) for d in documents[half:]])


def write_megatron(prefix, documents, dtype):
    builder = MegatronBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in documents:
        builder.add_document(torch.from_numpy(np.asarray(doc)), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("dtype,vocab", [(np.uint16, 50295), (np.int32, 100_000), (np.uint8, 200)])
def test_files_are_byte_identical_to_megatron_core_builder(tmp_path, dtype, vocab):
    documents = random_documents(200, vocab)
    write_megaphi(tmp_path / "ours", documents, dtype)
    write_megatron(tmp_path / "theirs", documents, dtype)
    assert read_bytes(tmp_path / "ours.bin") == read_bytes(tmp_path / "theirs.bin")
    assert read_bytes(tmp_path / "ours.idx") == read_bytes(tmp_path / "theirs.idx")


def test_megatron_core_reads_what_megaphi_writes(tmp_path):
    documents = random_documents(100, 50295, seed=1)
    write_megaphi(tmp_path / "ds", documents, np.uint16)
    theirs = MegatronIndexedDataset(str(tmp_path / "ds"))
    assert len(theirs) == len(documents)
    for i, doc in enumerate(documents):
        np.testing.assert_array_equal(theirs[i], doc)
    np.testing.assert_array_equal(theirs.document_indices, np.arange(len(documents) + 1))


def test_megaphi_reads_what_megatron_core_writes_including_multi_sequence_documents(tmp_path):
    rng = np.random.default_rng(2)
    builder = MegatronBuilder(str(tmp_path / "ds.bin"), dtype=np.int32)
    expected_sequences, expected_doc_indices = [], [0]
    for _ in range(50):
        lengths = list(rng.integers(1, 20, rng.integers(1, 4)))
        tokens = rng.integers(0, 70_000, sum(lengths))
        builder.add_document(torch.from_numpy(tokens), lengths)
        expected_sequences += np.split(tokens, np.cumsum(lengths)[:-1])
        expected_doc_indices.append(len(expected_sequences))
    builder.finalize(str(tmp_path / "ds.idx"))

    ours = IndexedDataset(tmp_path / "ds")
    assert ours.dtype == np.int32 and len(ours) == len(expected_sequences)
    for i, seq in enumerate(expected_sequences):
        np.testing.assert_array_equal(ours[i], seq)
    np.testing.assert_array_equal(ours.document_indices, expected_doc_indices)
    assert ours.num_documents == 50
    assert ours.num_tokens == sum(len(s) for s in expected_sequences)


def test_get_reads_a_window_inside_a_sequence_without_copying(tmp_path):
    documents = [np.arange(10), np.arange(100, 130)]
    write_megaphi(tmp_path / "ds", documents, np.uint16)
    ds = IndexedDataset(tmp_path / "ds")
    window = ds.get(1, offset=5, length=7)
    np.testing.assert_array_equal(window, np.arange(105, 112))
    assert not window.flags.writeable and not window.flags.owndata
    np.testing.assert_array_equal(ds.get(1, offset=25), np.arange(125, 130))
    assert [len(s) for s in ds[0:2]] == [10, 30]
    with pytest.raises(IndexError):
        ds.get(0, offset=8, length=5)
    with pytest.raises(IndexError):
        ds[2]


def test_reader_pickles_by_path_for_dataloader_workers(tmp_path):
    write_megaphi(tmp_path / "ds", random_documents(10, 1000), np.uint16)
    ds = IndexedDataset(tmp_path / "ds")
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 500
    np.testing.assert_array_equal(clone[3], ds[3])


def test_empty_dataset_reads_as_zero_sequences(tmp_path):
    IndexedDatasetWriter(tmp_path / "empty", np.uint16).finalize()
    ds = IndexedDataset(tmp_path / "empty")
    assert len(ds) == 0 and ds.num_tokens == 0 and ds.max_token_id() == -1


def test_merge_concatenates_shards_like_megatron(tmp_path):
    shards = [random_documents(30, 500, seed=s) for s in range(3)]
    for s, docs in enumerate(shards):
        write_megaphi(tmp_path / f"shard{s}", docs, np.uint16)
    merged = merge_datasets([tmp_path / f"shard{s}" for s in range(3)], tmp_path / "merged")
    write_megaphi(tmp_path / "whole", [d for docs in shards for d in docs], np.uint16)
    assert read_bytes(tmp_path / "merged.idx") == read_bytes(tmp_path / "whole.idx")
    assert read_bytes(tmp_path / "merged.bin") == read_bytes(tmp_path / "whole.bin")
    assert merged.num_documents == 90


def test_merge_refuses_mixed_dtypes_and_leaves_no_output(tmp_path):
    write_megaphi(tmp_path / "a", random_documents(5, 500), np.uint16)
    write_megaphi(tmp_path / "b", random_documents(5, 500), np.int32)
    with pytest.raises(IndexedDatasetError, match="dtype int32.*same tokenizer"):
        merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not os.path.exists(tmp_path / "out.bin") and not os.path.exists(tmp_path / "out.idx")


def test_best_dtype_is_uint16_below_65500():
    assert best_dtype(51200) == np.uint16
    assert best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32


def test_writer_refuses_token_ids_that_do_not_fit_its_dtype(tmp_path):
    with pytest.raises(IndexedDatasetError, match="token id 70000 does not fit.*uint16"):
        with IndexedDatasetWriter(tmp_path / "ds", np.uint16) as writer:
            writer.add_document(np.array([1, 70000]))
    assert not os.path.exists(tmp_path / "ds.idx")


def test_check_vocab_names_the_offending_token_and_sequence(tmp_path):
    write_megaphi(tmp_path / "ds", [np.array([1, 2, 3]), np.array([4, 999, 5])], np.uint16)
    ds = IndexedDataset(tmp_path / "ds")
    ds.check_vocab(1000)
    with pytest.raises(IndexedDatasetError, match="token id 999 .*sequence 1.* 512 entries"):
        ds.check_vocab(512)


# --- the token-stats sidecar -------------------------------------------------------------------------


def test_writer_records_the_token_id_range_next_to_the_index(tmp_path):
    documents = random_documents(200, 50295, seed=3)
    write_megaphi(tmp_path / "ds", documents, np.uint16)
    whole = np.concatenate(documents)
    expected = TokenStats(int(whole.size), int(whole.min()), int(whole.max()))
    ds = IndexedDataset(tmp_path / "ds")
    assert read_token_stats(tmp_path / "ds") == ds.token_stats() == expected
    assert ds.scan_token_stats(chunk_tokens=1000) == expected  # what a reader without the sidecar computes


def test_a_dataset_made_by_megatron_has_no_token_stats_until_scanned(tmp_path):
    write_megatron(tmp_path / "theirs", random_documents(20, 1000), np.uint16)
    ds = IndexedDataset(tmp_path / "theirs")
    with pytest.raises(MissingTokenStats, match=r"theirs\.stats\.json does not exist"):
        ds.token_stats()
    assert ds.max_token_id() == int(np.concatenate(ds[:]).max())  # falls back to reading the tokens


def test_token_stats_of_replaced_files_are_refused_as_stale(tmp_path):
    write_megaphi(tmp_path / "ds", random_documents(20, 1000, seed=1), np.uint16)
    write_megatron(tmp_path / "ds", random_documents(20, 1000, seed=2), np.uint16)  # rebuilt by another tool
    with pytest.raises(MissingTokenStats, match="describes other files than .*ds.bin/.idx"):
        IndexedDataset(tmp_path / "ds").token_stats()


def test_a_new_writer_removes_the_old_token_stats_first(tmp_path):
    write_megaphi(tmp_path / "ds", random_documents(5, 100), np.uint16)
    writer = IndexedDatasetWriter(tmp_path / "ds", np.uint16)
    assert not os.path.exists(stats_path(tmp_path / "ds"))  # never next to a .bin it does not describe
    writer.close_without_index()


def test_merge_records_the_token_stats_of_all_shards_with_or_without_their_own(tmp_path):
    shards = [random_documents(30, 500, seed=s) for s in range(2)]
    write_megaphi(tmp_path / "shard0", shards[0], np.uint16)
    write_megatron(tmp_path / "shard1", shards[1], np.uint16)  # no sidecar: scanned while copied
    merged = merge_datasets([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged")
    assert merged.token_stats() == merged.scan_token_stats()


# --- foreign, truncated and mismatched files ---------------------------------------------------


@pytest.fixture
def good(tmp_path):
    write_megaphi(tmp_path / "ds", random_documents(20, 1000, max_len=30), np.uint16)
    return tmp_path / "ds"


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_missing_files_say_how_to_build_them(tmp_path):
    with pytest.raises(IndexedDatasetError, match="does not exist.*data_tools.preprocess"):
        IndexedDataset(tmp_path / "nothing")


def test_foreign_index_is_refused_by_its_magic(good):
    patch(f"{good}.idx", 0, b"NOTANIDX\x00")
    with pytest.raises(IndexedDatasetError, match="not a Megatron indexed dataset index"):
        IndexedDataset(good)


def test_unknown_version_is_refused(good):
    patch(f"{good}.idx", 9, struct.pack("<Q", 2))
    with pytest.raises(IndexedDatasetError, match="index version 2"):
        IndexedDataset(good)


def test_unknown_dtype_code_is_refused(good):
    patch(f"{good}.idx", 17, struct.pack("<B", 42))
    with pytest.raises(IndexedDatasetError, match="unknown dtype code 42"):
        IndexedDataset(good)


def test_truncated_index_is_refused(good):
    os.truncate(f"{good}.idx", os.path.getsize(f"{good}.idx") - 8)
    with pytest.raises(IndexedDatasetError, match="truncated or corrupt"):
        IndexedDataset(good)
    os.truncate(f"{good}.idx", 10)
    with pytest.raises(IndexedDatasetError, match="shorter than the 34-byte header"):
        IndexedDataset(good)


def test_bin_whose_size_disagrees_with_the_index_is_refused(good):
    os.truncate(f"{good}.bin", os.path.getsize(f"{good}.bin") - 2)
    with pytest.raises(IndexedDatasetError, match="do not belong together or one is truncated"):
        IndexedDataset(good)
