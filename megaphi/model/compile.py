"""torch.compile for training: each decoder block, or the whole model (loss included), or nothing.

"blocks" compiles every decoder layer separately (torchtitan's way): the layers share one compiled
graph, compilation takes seconds, and the embedding, the fused loss and the activation-checkpointing
wrapper stay eager. "model" hands the whole forward, loss included, to the compiler: more fusion
across blocks, longer compilation. ``nn.Module.compile`` compiles in place, so parameter names,
state dicts and checkpoints are the same as without compilation, and a run can resume with another
choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megaphi.model.phi import PhiForCausalLM

COMPILE_MODES = ("none", "blocks", "model")


def compile_model(model: PhiForCausalLM, mode: str) -> PhiForCausalLM:
    """Compile ``model`` in place as ``mode`` says; returns it."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r} must be one of {COMPILE_MODES}")
    if mode == "blocks":
        for layer in model.model.layers:
            layer.compile()
    elif mode == "model":
        model.compile()
    return model
