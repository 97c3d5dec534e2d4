"""Hugging Face Phi checkpoints <-> megaphi full state dicts.

Three source layouts are read:
- transformers' ``PhiForCausalLM`` (``model.layers.{i}.self_attn.q_proj`` ...), safetensors or .bin;
- the legacy MixFormer layout of the original ``microsoft/phi-1`` / ``phi-1_5`` / ``phi-2`` remote code
  (``transformer.embd.wte``, ``transformer.h.{i}.ln``, ``transformer.h.{i}.mixer.Wqkv`` / ``out_proj``,
  ``transformer.h.{i}.mlp.fc1`` / ``fc2``, ``lm_head.ln``, ``lm_head.linear``);
- its older ``nn.Sequential`` variant (``layers.0.wte``, ``layers.{i+1}.mixer.Wqkv`` ...,
  ``layers.{n+1}.ln`` / ``linear``).
MixFormer's ``Wqkv`` rows are ``[q; k; v]`` (rearranged as ``(three h d)``), which is exactly megaphi's
fused ``qkv_proj`` at TP=1, so it maps without reordering.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from megaphi.convert.checkpoint import prepare_output_dir
from megaphi.convert.layout import CheckpointError, QKV, StateDict, check_state_dict, param_specs
from megaphi.model import PhiConfig
from megaphi.tokenizer import load_tokenizer

HF = "hf"
LEGACY = "mixformer"
LEGACY_SEQUENTIAL = "mixformer-sequential"

# Rotary frequencies are derived from the config; old checkpoints persisted them as buffers.
_DERIVED_BUFFER = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
_LEGACY_LAYER_PARTS = {
    "input_layernorm.": "ln.",
    "self_attn.qkv_proj.": "mixer.Wqkv.",
    "self_attn.dense.": "mixer.out_proj.",
    "mlp.": "mlp.",
}


def _hf_names(name: str) -> list[str]:
    if ".self_attn.qkv_proj." in name:
        return [name.replace("qkv_proj", proj) for proj in ("q_proj", "k_proj", "v_proj")]
    return [name]


def _legacy_name(name: str, config: PhiConfig, sequential: bool) -> str:
    n = config.num_hidden_layers
    embd, block, head = (
        ("layers.0.", "layers.{}.", f"layers.{n + 1}.")
        if sequential
        else ("transformer.embd.", "transformer.h.{}.", "lm_head.")
    )
    if name == "model.embed_tokens.weight":
        return embd + "wte.weight"
    if name.startswith("model.final_layernorm."):
        return head + "ln." + name.rsplit(".", 1)[1]
    if name.startswith("lm_head."):
        return head + "linear." + name.rsplit(".", 1)[1]
    match = _LAYER.match(name)
    if match is None:
        raise AssertionError(f"no legacy name for {name}")
    layer, rest = match.groups()
    index = int(layer) + 1 if sequential else int(layer)
    for ours, theirs in _LEGACY_LAYER_PARTS.items():
        if rest.startswith(ours):
            return block.format(index) + theirs + rest[len(ours) :]
    raise AssertionError(f"no legacy name for {name}")


def source_names(layout: str, config: PhiConfig) -> Callable[[str], list[str]]:
    """For a layout, a function from a megaphi tensor name to the source tensors it concatenates (dim 0)."""
    if layout == HF:
        return _hf_names
    return lambda name: [_legacy_name(name, config, sequential=layout == LEGACY_SEQUENTIAL)]


def detect_layout(state_dict: StateDict) -> str:
    if any(k.startswith("transformer.") for k in state_dict):
        return LEGACY
    if "layers.0.wte.weight" in state_dict:
        return LEGACY_SEQUENTIAL
    return HF


def _expected_source_shapes(config: PhiConfig, layout: str) -> dict[str, tuple[int, ...]]:
    names = source_names(layout, config)
    expected = {}
    for spec in param_specs(config):
        sources = names(spec.name)
        shape = (spec.shape[0] // len(sources), *spec.shape[1:])
        expected.update({source: shape for source in sources})
    return expected


def source_to_megaphi(state_dict: StateDict, config: PhiConfig, where: str = "Hugging Face checkpoint") -> StateDict:
    """A transformers or legacy MixFormer Phi state dict -> megaphi's full (TP=1, unpadded) state dict."""
    layout = detect_layout(state_dict)
    state_dict = {k: v for k, v in state_dict.items() if not _DERIVED_BUFFER.match(k)}
    check_state_dict(state_dict, _expected_source_shapes(config, layout), f"{where} ({layout} layout)")
    names = source_names(layout, config)
    full = {}
    for spec in param_specs(config):
        parts = [state_dict[source] for source in names(spec.name)]
        full[spec.name] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return full


def megaphi_to_hf_state_dict(full: StateDict, config: PhiConfig) -> StateDict:
    """megaphi's full state dict -> transformers ``PhiForCausalLM`` names (q/k/v unfused)."""
    out = {}
    for spec in param_specs(config):
        names = _hf_names(spec.name)
        if spec.split == QKV:
            out.update({name: part.clone() for name, part in zip(names, full[spec.name].chunk(3, dim=0))})
        else:
            out[names[0]] = full[spec.name]
    return out


# -- configs -------------------------------------------------------------------------------------------


def _check_supported(hf: dict[str, Any], where: str) -> None:
    heads = hf.get("num_attention_heads")
    kv_heads = hf.get("num_key_value_heads")
    if kv_heads not in (None, heads):
        raise CheckpointError(
            f"{where}: num_key_value_heads {kv_heads} differs from num_attention_heads {heads}; megaphi's phi "
            f"model has no grouped-query attention"
        )
    if hf.get("qk_layernorm"):
        raise CheckpointError(f"{where}: qk_layernorm is true; megaphi's phi model has no query/key LayerNorm")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"{where}: rope type '{rope_type}' is not supported; only default rotary embeddings")


# transformers' Phi, the original microsoft/phi-1 MixFormer code, and configs that predate the field
PHI_MODEL_TYPES = ("phi", "phi-msft", "mixformer-sequential", None)


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> PhiConfig:
    """A Hugging Face ``config.json`` dict (transformers Phi or legacy MixFormer) -> PhiConfig."""
    model_type = hf.get("model_type")
    if model_type not in PHI_MODEL_TYPES:
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not a Phi architecture (expected one of "
            f"{', '.join(repr(t) for t in PHI_MODEL_TYPES if t)}); megaphi converts Phi models only"
        )
    if "n_embd" in hf:  # legacy MixFormer field names
        missing = [k for k in ("vocab_size", "n_layer", "n_head") if k not in hf]
        if missing:
            raise CheckpointError(f"{where} has no field '{missing[0]}': it is not a MixFormer (phi-1) config")
        head_dim = hf["n_embd"] // hf["n_head"]
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["n_embd"],
            num_hidden_layers=hf["n_layer"],
            intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
            num_attention_heads=hf["n_head"],
            max_position_embeddings=hf.get("n_positions", 2048),
            partial_rotary_factor=hf.get("rotary_dim", head_dim) / head_dim,
            rope_theta=10000.0,
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            hidden_act=hf.get("activation_function", "gelu_new"),
            resid_pdrop=hf.get("resid_pdrop", 0.0),
            embd_pdrop=hf.get("embd_pdrop", 0.0),
            attention_dropout=hf.get("attn_pdrop", 0.0),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
        )
    else:
        _check_supported(hf, where)
        rope = hf.get("rope_parameters") or {}
        missing = [
            k
            for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            if k not in hf
        ]
        if missing:
            raise CheckpointError(f"{where} has no field '{missing[0]}': it is not a Phi config")
        fields = {
            k: hf[k]
            for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        }
        fields.update(
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            partial_rotary_factor=hf.get("partial_rotary_factor", rope.get("partial_rotary_factor", 0.5)),
            rope_theta=hf.get("rope_theta", rope.get("rope_theta", 10000.0)),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
            hidden_act=hf.get("hidden_act", "gelu_new"),
            resid_pdrop=hf.get("resid_pdrop", 0.0),
            embd_pdrop=hf.get("embd_pdrop", 0.0),
            attention_dropout=hf.get("attention_dropout") or 0.0,
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
        )
    if "initializer_range" in hf:
        fields["initializer_range"] = hf["initializer_range"]
    try:
        return PhiConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from e


def hf_config_kwargs(config: PhiConfig) -> dict[str, Any]:
    """Keyword arguments for ``transformers.PhiConfig`` describing the same network."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        partial_rotary_factor=config.partial_rotary_factor,
        rope_theta=config.rope_theta,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act=config.hidden_act,
        resid_pdrop=config.resid_pdrop,
        embd_pdrop=config.embd_pdrop,
        attention_dropout=config.attention_dropout,
        tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range,
    )


# -- files ---------------------------------------------------------------------------------------------

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _load_weight_file(path: Path) -> StateDict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint's index names it; restore it") from None
    except Exception as e:  # safetensors, pickle and zip each raise their own kind for a damaged file
        raise CheckpointError(
            f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}): the file "
            "is truncated or corrupt; download or restore it again"
        ) from None


def load_hf_state_dict(hf_dir: str | Path) -> StateDict:
    """All tensors of a Hugging Face model directory (single-file or sharded, safetensors preferred)."""
    hf_dir = Path(hf_dir)
    for name in _WEIGHT_FILES:
        path = hf_dir / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            files = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state_dict: StateDict = {}
            for file in files:
                state_dict.update(_load_weight_file(hf_dir / file))
            return state_dict
        return _load_weight_file(path)
    raise CheckpointError(f"{hf_dir} has no weights ({', '.join(_WEIGHT_FILES)}): pass a Hugging Face model directory")


def load_hf_checkpoint(hf_dir: str | Path) -> tuple[PhiConfig, StateDict]:
    """A Hugging Face Phi directory -> (PhiConfig, megaphi full state dict)."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{hf_dir} has no config.json: pass a Hugging Face model directory")
    config = config_from_hf(json.loads(config_path.read_text()), str(config_path))
    return config, source_to_megaphi(load_hf_state_dict(hf_dir), config, f"Hugging Face checkpoint {hf_dir}")


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
)


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def save_hf_checkpoint(
    out_dir: str | Path, config: PhiConfig, full: StateDict, tokenizer_dir: str | Path | None = None
) -> Path:
    """Write a directory that ``transformers.AutoModelForCausalLM.from_pretrained`` loads as PhiForCausalLM."""
    import transformers  # heavy; only conversions to Hugging Face need it
    from safetensors.torch import save_file

    out = prepare_output_dir(out_dir)
    eos = None
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, out / name)
        eos = load_tokenizer(tokenizer_dir).eod_id  # the end-of-text id generation and serving use
    dtype = next(iter(full.values())).dtype
    hf_config = transformers.PhiConfig(
        **hf_config_kwargs(config), bos_token_id=eos, eos_token_id=eos, architectures=["PhiForCausalLM"], dtype=dtype
    )
    hf_config.save_pretrained(str(out))
    tensors = {k: v.contiguous() for k, v in megaphi_to_hf_state_dict(full, config).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
