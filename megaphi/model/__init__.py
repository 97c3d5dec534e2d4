"""The phi-1 model: config and presets, attention backends, rotary, tensor-parallel blocks."""

from megaphi.model.attention import KVCache
from megaphi.model.config import PhiConfig, get_preset, preset_names
from megaphi.model.phi import PhiForCausalLM

__all__ = ["PhiConfig", "PhiForCausalLM", "KVCache", "get_preset", "preset_names"]
