"""The start-up checks read headers, not data: time to the first step does not grow with the dataset."""

import json
import os

import numpy as np
import pytest

from megaphi.config import ConfigError, load_config
from megaphi.data.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    TokenStats,
    _write_index,
    bin_path,
    stats_path,
    write_token_stats,
)
from megaphi.train.config import TrainConfig
from megaphi.train.preflight import PreflightError, check, preflight
from tests.distributed import spawn

BIG_SEQUENCE = 2**31 - 1  # the longest sequence an .idx can describe


def recipe(tmp_path, *paths, extra=()):
    return load_config(
        TrainConfig,
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.paths=[{', '.join(paths)}]",
            "data.seq_len=64",
            "train.global_batch_size=8",
            "train.micro_batch_size=2",
            "train.precision=fp32",
            *extra,
        ],
    )


@pytest.fixture
def big_dataset(tmp_path):
    """8.6 billion uint16 tokens (17 GiB of .bin), as a sparse file: all token ids are 0, as its sidecar says."""
    prefix = str(tmp_path / "big")
    lengths = np.full(4, BIG_SEQUENCE, dtype=np.int32)
    _write_index(prefix + ".idx", np.dtype(np.uint16), lengths, np.arange(5, dtype=np.int64))
    with open(bin_path(prefix), "wb") as f:
        f.truncate(int(lengths.sum(dtype=np.int64)) * 2)
    write_token_stats(prefix, TokenStats(int(lengths.sum(dtype=np.int64)), 0, 0))
    return prefix


def test_start_up_reads_the_token_stats_sidecar_and_never_the_token_stream(tmp_path, big_dataset, monkeypatch):
    def read_tokens(self, *args, **kwargs):
        raise AssertionError(f"start-up read the token stream of {self.prefix}")

    monkeypatch.setattr(IndexedDataset, "tokens", read_tokens)
    monkeypatch.setattr(IndexedDataset, "scan_token_stats", read_tokens)
    said = []
    start = check(recipe(tmp_path, big_dataset), world_size=1, resume=False, say=said.append)
    assert start.data_paths == [(None, big_dataset)] and said == []
    assert start.plan.gradient_accumulation_steps == 4 and start.model_config.vocab_size == 2048
    assert start.ds_config["train_batch_size"] == 8
    assert not (tmp_path / "run").exists()  # checks only: the run directory is the job's to create


@pytest.mark.slow
def test_a_whole_start_and_first_steps_never_read_a_token_stream_end_to_end(tmp_path, tiny_corpus, monkeypatch):
    from megaphi.train import main

    def read_tokens(self, *args, **kwargs):
        raise AssertionError(f"start-up read the token stream of {self.prefix}")

    monkeypatch.setattr(IndexedDataset, "tokens", read_tokens)
    monkeypatch.setattr(IndexedDataset, "scan_token_stats", read_tokens)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # main() exports the launch it discovers, as a launcher would
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        f"data: {{paths: [{tiny_corpus}], seq_len: 64}}\n"
        "train: {steps: 2, global_batch_size: 4, micro_batch_size: 2, precision: fp32}\n"
        "logging: {interval: 1, tensorboard: false, plot: false}\neval: {interval: 2, batches: 1}\n"
    )
    assert main(["--config", str(recipe_file), f"run_dir={tmp_path / 'run'}"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step2"


def test_token_ids_beyond_the_vocabulary_are_found_from_the_sidecar(tmp_path):
    prefix = str(tmp_path / "ds")
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_document(np.array([1, 2, 3000, 4]))
    with pytest.raises(ConfigError, match=f"^data.paths: {prefix} holds token id 3000 .*2048 entries"):
        check(recipe(tmp_path, prefix), world_size=1, resume=False)


def test_a_dataset_without_token_stats_is_scanned_once_with_a_notice_naming_the_fix(tmp_path):
    prefix = str(tmp_path / "foreign")
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_document(np.arange(100))
    os.remove(stats_path(prefix))  # as Megatron-LM's own preprocess_data.py leaves it
    said = []
    check(recipe(tmp_path, prefix), world_size=1, resume=False, say=said.append)
    assert len(said) == 1, said
    assert said[0].startswith(
        f"megaphi.train: {prefix} has no token statistics ({prefix}.stats.json does not "
        "exist); reading its 100 tokens once"
    )
    assert f"`python -m data_tools.preprocess stats --input {prefix}` records them" in said[0]
    with pytest.raises(ConfigError, match="holds token id 99 .*64 entries"):  # and the scan still decides
        check(
            recipe(tmp_path, prefix, extra=["model.overrides.vocab_size=64"]),
            world_size=1,
            resume=False,
            say=said.append,
        )


def preflight_on_each_rank(rank, world_size, tmp_path, prefix):
    scanned = []
    scan = IndexedDataset.scan_token_stats

    def counted_scan(self, *args, **kwargs):
        scanned.append(self.prefix)
        return scan(self, *args, **kwargs)

    IndexedDataset.scan_token_stats = counted_scan
    start, locks = preflight(recipe(tmp_path, prefix), world_size, resume=False)
    try:
        with pytest.raises(PreflightError) as bad:
            preflight(recipe(tmp_path, prefix, extra=["train.global_batch_size=7"]), world_size, resume=False)
    finally:
        for lock in locks:
            lock.release()
    (tmp_path / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "data_paths": start.data_paths,
                "accumulation": start.plan.gradient_accumulation_steps,
                "vocab_size": start.model_config.vocab_size,
                "scanned": scanned,
                "locks": len(locks),
                "error": str(bad.value),
            }
        )
    )


def test_rank_zero_checks_once_and_every_rank_gets_the_same_plan_or_the_same_error(tmp_path):
    prefix = str(tmp_path / "foreign")
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_document(np.arange(100))
    os.remove(stats_path(prefix))  # so that checking its token ids means reading them
    spawn(preflight_on_each_rank, 2, tmp_path, prefix)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["scanned"] == [prefix] and rank1["scanned"] == []  # the token stream is read once per job
    assert (rank0["locks"], rank1["locks"]) == (1, 0)  # global rank 0 holds the run directory
    assert {k: v for k, v in rank0.items() if k not in ("scanned", "locks")} == {
        k: v for k, v in rank1.items() if k not in ("scanned", "locks")
    }
    assert rank0["accumulation"] == 2 and rank0["data_paths"] == [[None, prefix]]
    assert rank0["error"].startswith(
        "train.global_batch_size: 7 is not divisible by micro_batch_size 2 x data-parallel size 2"
    )
