"""megaphi checkpoints: DeepSpeed's file naming, resharding, and clear refusals of broken directories."""

import json

import pytest
import torch

from megaphi.convert import (
    CheckpointError,
    load_model_checkpoint,
    reshard_checkpoint,
    save_model_checkpoint,
    split_state_dict,
)
from megaphi.convert.__main__ import main as convert_main
from megaphi.convert.layout import param_specs
from tests.megaphi.tiny_phi import tiny_config


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def checkpoint(tmp_path, config):
    g = torch.Generator().manual_seed(0)
    full = {s.name: torch.randn(s.shape, generator=g) for s in param_specs(config)}
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    return save_model_checkpoint(tmp_path / "tp1", config, split_state_dict(full, config, 1), tokenizer_dir=tokenizer)


def test_a_checkpoint_uses_deepspeeds_file_names_and_records_config_tp_and_tokenizer(checkpoint, config):
    meta = json.loads((checkpoint / "megaphi.json").read_text())
    assert meta == {"format": "megaphi", "model": config.to_dict(), "tensor_parallel_size": 1, "tokenizer": "tokenizer"}
    states = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=True)
    assert set(states) == {"module"} and "model.embed_tokens.weight" in states["module"]
    assert (checkpoint / "tokenizer/tokenizer.json").is_file()


def test_reshard_one_to_two_to_one_is_exact(tmp_path, checkpoint):
    assert convert_main(["reshard", "--checkpoint", str(checkpoint), "--tp", "2", "--out", str(tmp_path / "tp2")]) == 0
    reshard_checkpoint(tmp_path / "tp2", tmp_path / "back", 1)
    _, tp2_shards, tp2_meta = load_model_checkpoint(tmp_path / "tp2")
    assert len(tp2_shards) == 2 and tp2_meta["tensor_parallel_size"] == 2
    assert tp2_shards[1]["model.embed_tokens.weight"].shape == (256, 32)
    _, (original,), _ = load_model_checkpoint(checkpoint)
    _, (back,), back_meta = load_model_checkpoint(tmp_path / "back")
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)
    assert (tmp_path / "back/tokenizer/tokenizer.json").is_file() and back_meta["tokenizer_path"].endswith("tokenizer")


def test_a_run_root_resolves_to_the_tag_named_by_latest(tmp_path, checkpoint):
    root = tmp_path / "run/checkpoints"
    root.mkdir(parents=True)
    checkpoint.rename(root / "step100")
    (root / "latest").write_text("step100")
    _, shards, meta = load_model_checkpoint(root)
    assert meta["path"] == str(root / "step100") and len(shards) == 1


def test_a_tokenizer_named_in_megaphi_json_is_found_and_a_wrong_one_is_refused(tmp_path, checkpoint):
    (checkpoint / "tokenizer").rename(tmp_path / "shared_tokenizer")
    meta = json.loads((checkpoint / "megaphi.json").read_text())
    (checkpoint / "megaphi.json").write_text(json.dumps({**meta, "tokenizer": str(tmp_path / "shared_tokenizer")}))
    assert load_model_checkpoint(checkpoint)[2]["tokenizer_path"] == str(tmp_path / "shared_tokenizer")
    (checkpoint / "megaphi.json").write_text(json.dumps({**meta, "tokenizer": str(tmp_path / "nowhere")}))
    with pytest.raises(CheckpointError, match=r"field 'tokenizer' names .*nowhere, which is not a directory"):
        load_model_checkpoint(checkpoint)


def test_latest_naming_an_unfinished_tag_is_refused(tmp_path, checkpoint):
    (tmp_path / "latest").write_text("step200")
    with pytest.raises(CheckpointError, match="names tag 'step200'"):
        load_model_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("\n")
    with pytest.raises(CheckpointError, match="latest is empty"):
        load_model_checkpoint(tmp_path)


def test_a_missing_rank_file_is_refused_naming_the_file(checkpoint):
    meta = json.loads((checkpoint / "megaphi.json").read_text())
    (checkpoint / "megaphi.json").write_text(json.dumps({**meta, "tensor_parallel_size": 2}))
    with pytest.raises(
        CheckpointError,
        match=r"mp_rank_01_model_states.pt is missing: megaphi.json says "
        r"tensor_parallel_size 2",
    ):
        load_model_checkpoint(checkpoint)


def test_a_config_whose_vocab_does_not_match_the_shards_is_refused_naming_the_key(checkpoint):
    meta = json.loads((checkpoint / "megaphi.json").read_text())
    meta["model"]["vocab_size"] = 51200
    (checkpoint / "megaphi.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError,
        match=r"key 'model.embed_tokens.weight' has shape \[384, 32\], "
        r"expected \[51200, 32\]",
    ):
        load_model_checkpoint(checkpoint)


def test_an_unknown_config_field_is_refused_naming_it(checkpoint):
    meta = json.loads((checkpoint / "megaphi.json").read_text())
    meta["model"]["n_embd"] = 32
    (checkpoint / "megaphi.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"field 'model' is not a valid PhiConfig: .*n_embd"):
        load_model_checkpoint(checkpoint)


def test_a_directory_that_is_no_checkpoint_is_refused_with_what_to_do(tmp_path, capsys):
    assert convert_main(["to-hf", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path} has neither megaphi.json nor a 'latest' file: pass a "
        f"megaphi checkpoint directory (convert a Hugging Face model with "
        f"`python -m megaphi.convert from-hf`)\n"
    )


def test_conversions_never_write_into_a_non_empty_directory(tmp_path, checkpoint):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        reshard_checkpoint(checkpoint, tmp_path / "busy", 2)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_every_convert_command_reads_its_model_from_model_and_keeps_the_older_names(tmp_path, checkpoint):
    from megaphi.convert.__main__ import build_parser

    for command, old in (("to-hf", "--checkpoint"), ("reshard", "--checkpoint"), ("from-hf", "--hf")):
        new_args = build_parser().parse_args(
            [command, "--model", "m", "--out", "o"] + (["--tensor-parallel-size", "2"] if command != "to-hf" else [])
        )
        old_args = build_parser().parse_args(
            [command, old, "m", "--out", "o"] + (["--tp", "2"] if command != "to-hf" else [])
        )
        assert vars(new_args) == vars(old_args)
        assert new_args.model == "m" and getattr(new_args, "tp", 2) == 2
    assert (
        convert_main(
            ["reshard", "--model", str(checkpoint), "--tensor-parallel-size", "2", "--out", str(tmp_path / "tp2")]
        )
        == 0
    )
    assert load_model_checkpoint(tmp_path / "tp2")[2]["tensor_parallel_size"] == 2
