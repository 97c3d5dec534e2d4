"""Hugging Face Phi checkpoints convert to megaphi and back without changing the network."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from megaphi import parallel
from megaphi.convert import CheckpointError, convert_from_hf, load_model_checkpoint, merge_state_dicts, split_state_dict
from megaphi.convert.__main__ import main as convert_main
from megaphi.generate import load_model
from megaphi.model import PhiForCausalLM
from tests.distributed import spawn
from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tokenizer_dir):
    path = tmp_path_factory.mktemp("hf")
    make_hf_phi(path, tokenizer_dir=tokenizer_dir)
    return path


def hf_reference(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def megaphi_logits(checkpoint, input_ids):
    config, shards, _ = load_model_checkpoint(checkpoint)
    model = PhiForCausalLM(config).eval()
    model.load_state_dict(split_state_dict(merge_state_dicts(shards, config), config, 1)[0])
    with torch.no_grad():
        return model(input_ids)


INPUT_IDS = torch.tensor([[5, 17, 280, 3, 99, 42, 7, 0, 250, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


WEIGHT_FILES = {
    "safetensors": "model.safetensors",
    "bin": "pytorch_model.bin",
    "sharded": "model.safetensors.index.json",
}


@pytest.mark.parametrize("weights", WEIGHT_FILES)
def test_from_hf_gives_the_logits_of_transformers_phi(tmp_path, weights):
    reference = make_hf_phi(tmp_path / "hf", weights=weights, seed=1)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir() if "model" in p.name)[-1] == WEIGHT_FILES[weights]
    convert_from_hf(tmp_path / "hf", tmp_path / "megaphi")
    with torch.no_grad():
        expected = reference(INPUT_IDS).logits
    actual = megaphi_logits(tmp_path / "megaphi", INPUT_IDS)
    assert actual.shape == expected.shape == (2, 10, 300)
    assert (actual - expected).abs().max() < 1e-4


def test_to_hf_of_from_hf_reproduces_every_tensor_and_loads_as_phi_with_its_tokenizer(tmp_path, hf_dir):
    from transformers import AutoTokenizer

    assert convert_main(["from-hf", "--hf", str(hf_dir), "--out", str(tmp_path / "m"), "--tp", "2"]) == 0
    assert convert_main(["to-hf", "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "back")]) == 0
    original, restored = (
        load_file(str(hf_dir / "model.safetensors")),
        load_file(str(tmp_path / "back/model.safetensors")),
    )
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor), name
    model = hf_reference(tmp_path / "back")
    assert type(model).__name__ == "PhiForCausalLM"
    with torch.no_grad():
        assert torch.equal(model(INPUT_IDS).logits, hf_reference(hf_dir)(INPUT_IDS).logits)
    text = "def add(a, b):\n    return a + b"
    assert AutoTokenizer.from_pretrained(str(tmp_path / "back")).encode(text) == AutoTokenizer.from_pretrained(
        str(hf_dir)
    ).encode(text)


def _legacy_checkpoint(hf_dir, out, sequential: bool):
    """Write the reference model in the original microsoft/phi-1 MixFormer layout (fused Wqkv = [q; k; v])."""
    hf = load_file(str(hf_dir / "model.safetensors"))
    config = json.loads((hf_dir / "config.json").read_text())
    n = config["num_hidden_layers"]
    embd, head = ("layers.0.", f"layers.{n + 1}.") if sequential else ("transformer.embd.", "lm_head.")
    legacy = {
        embd + "wte.weight": hf["model.embed_tokens.weight"],
        head + "ln.weight": hf["model.final_layernorm.weight"],
        head + "ln.bias": hf["model.final_layernorm.bias"],
        head + "linear.weight": hf["lm_head.weight"],
        head + "linear.bias": hf["lm_head.bias"],
    }
    for i in range(n):
        block = f"layers.{i + 1}." if sequential else f"transformer.h.{i}."
        ours = f"model.layers.{i}."
        for kind in ("weight", "bias"):
            legacy[block + f"ln.{kind}"] = hf[ours + f"input_layernorm.{kind}"]
            legacy[block + f"mixer.Wqkv.{kind}"] = torch.cat([hf[ours + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            legacy[block + f"mixer.out_proj.{kind}"] = hf[ours + f"self_attn.dense.{kind}"]
            legacy[block + f"mlp.fc1.{kind}"] = hf[ours + f"mlp.fc1.{kind}"]
            legacy[block + f"mlp.fc2.{kind}"] = hf[ours + f"mlp.fc2.{kind}"]
        legacy[block + "mixer.rotary_emb.inv_freq"] = torch.ones(4)  # persisted by the old code; derived data
    out.mkdir()
    torch.save(legacy, out / "pytorch_model.bin")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    (out / "config.json").write_text(
        json.dumps(
            {
                "model_type": "mixformer-sequential" if sequential else "phi-msft",
                "vocab_size": config["vocab_size"],
                "n_embd": config["hidden_size"],
                "n_layer": n,
                "n_head": config["num_attention_heads"],
                "n_inner": config["intermediate_size"],
                "n_positions": config["max_position_embeddings"],
                "rotary_dim": int(head_dim * config["rope_parameters"]["partial_rotary_factor"]),
                "layer_norm_epsilon": config["layer_norm_eps"],
                "activation_function": "gelu_new",
            }
        )
    )


@pytest.mark.parametrize("sequential", [False, True], ids=["transformer.h", "layers.N"])
def test_legacy_mixformer_phi1_layout_converts_to_the_same_network(tmp_path, hf_dir, sequential):
    _legacy_checkpoint(hf_dir, tmp_path / "legacy", sequential)
    convert_from_hf(tmp_path / "legacy", tmp_path / "m")
    with torch.no_grad():
        expected = hf_reference(hf_dir)(INPUT_IDS).logits
    assert (megaphi_logits(tmp_path / "m", INPUT_IDS) - expected).abs().max() < 1e-4


def _tp_worker(rank, world_size, checkpoint, input_ids, expected):
    parallel.initialize(world_size)
    try:
        config, shards, meta = load_model_checkpoint(checkpoint)
        assert meta["tensor_parallel_size"] == world_size
        model = PhiForCausalLM(config).eval()
        model.load_state_dict(shards[parallel.get_tensor_parallel_rank()], strict=True)
        with torch.no_grad():
            logits = model(input_ids)
        assert (logits - expected).abs().max() < 1e-4
        # Inference inside a tensor-parallel group: load_model takes this rank's shard of the merged weights.
        served, _ = load_model(checkpoint)
        with torch.no_grad():
            assert torch.equal(served(input_ids), logits)
    finally:
        parallel.destroy()


@pytest.mark.slow
def test_from_hf_at_tp2_gives_the_same_logits_in_two_processes(tmp_path, hf_dir):
    convert_from_hf(hf_dir, tmp_path / "tp2", tensor_parallel_size=2)
    with torch.no_grad():
        expected = hf_reference(hf_dir)(INPUT_IDS).logits
    spawn(_tp_worker, 2, str(tmp_path / "tp2"), INPUT_IDS, expected)


def _rewrite_weights(hf_dir, out, edit):
    import shutil

    shutil.copytree(hf_dir, out)
    tensors = load_file(str(out / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"),
            r"is missing key 'model.layers.1.self_attn.k_proj.bias'",
        ),
        (
            lambda t: t.update({"model.layers.0.mlp.gate.weight": torch.zeros(2)}),
            r"has unexpected key 'model.layers.0.mlp.gate.weight'",
        ),
        (
            lambda t: t.update({"model.layers.0.mlp.fc1.weight": torch.zeros(65, 32)}),
            r"key 'model.layers.0.mlp.fc1.weight' has shape \[65, 32\], expected \[64, 32\]",
        ),
    ],
)
def test_a_checkpoint_with_missing_extra_or_misshapen_tensors_is_refused_naming_the_key(
    tmp_path, hf_dir, capsys, edit, message
):
    _rewrite_weights(hf_dir, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=message):
        convert_from_hf(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert convert_main(["from-hf", "--hf", str(tmp_path / "bad"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Hugging Face checkpoint" in err


def test_heads_that_do_not_divide_by_tp_are_refused_before_anything_is_written(tmp_path, hf_dir, capsys):
    assert convert_main(["from-hf", "--hf", str(hf_dir), "--out", str(tmp_path / "out"), "--tp", "3"]) == 2
    assert capsys.readouterr().err == (
        "error: num_attention_heads 4 is not divisible by tensor_parallel_size 3: "
        "choose a tensor parallel size that divides it\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"num_key_value_heads": 2}, "num_key_value_heads 2 differs from num_attention_heads 4"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings=True is not supported"),
        ({"hidden_act": "relu"}, "hidden_act='relu' is not supported"),
        ({"model_type": "llama"}, "model_type 'llama' is not a Phi architecture"),
    ],
)
def test_configs_that_are_not_phi_1_networks_are_refused_naming_the_field(tmp_path, hf_dir, edit, message):
    import shutil

    shutil.copytree(hf_dir, tmp_path / "other")
    config = json.loads((tmp_path / "other/config.json").read_text())
    (tmp_path / "other/config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(CheckpointError, match=message):
        convert_from_hf(tmp_path / "other", tmp_path / "out")


def test_truncated_weights_are_refused_naming_the_file(tmp_path, hf_dir):
    import shutil

    shutil.copytree(hf_dir, tmp_path / "other")
    weights = tmp_path / "other" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{weights} cannot be read .*truncated or corrupt"):
        convert_from_hf(tmp_path / "other", tmp_path / "out")
    convert_from_hf(hf_dir, tmp_path / "ckpt", tensor_parallel_size=1)
    shard = tmp_path / "ckpt" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{shard} cannot be read .*truncated or corrupt"):
        load_model_checkpoint(tmp_path / "ckpt")


@pytest.mark.slow
def test_the_convert_cli_runs_as_a_module(tmp_path, hf_dir):
    run = subprocess.run(
        [sys.executable, "-m", "megaphi.convert", "from-hf", "--hf", str(hf_dir), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"wrote {tmp_path / 'm'}"
    assert (tmp_path / "m/megaphi.json").is_file() and (tmp_path / "m/mp_rank_00_model_states.pt").is_file()


def test_the_convert_cli_documents_its_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("from-hf", "to-hf", "reshard"))
