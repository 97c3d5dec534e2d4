"""LayerNorm: NVIDIA apex's fused CUDA kernel where it is installed, PyTorch's otherwise.

Both modules hold ``weight`` and ``bias`` under the same names, so checkpoints do not depend on the
choice. apex's kernel is opaque to torch.compile (a graph break per LayerNorm), so a compiled run
is better served by "torch", which the compiler fuses with its neighbours.
"""

from __future__ import annotations

import importlib.util

from torch import nn

from megaphi.model.config import LAYER_NORM_BACKENDS


def apex_available() -> bool:
    return importlib.util.find_spec("apex") is not None


def resolve_layer_norm(name: str) -> str:
    """ "auto" is "apex" when apex is importable, else "torch"; an explicit "apex" without it is an error."""
    if name not in LAYER_NORM_BACKENDS:
        raise ValueError(f"layer_norm_backend={name!r} must be one of {LAYER_NORM_BACKENDS}")
    if name == "auto":
        return "apex" if apex_available() else "torch"
    if name == "apex" and not apex_available():
        raise ValueError(
            "layer_norm_backend='apex' needs NVIDIA apex built with its CUDA extensions "
            "(github.com/NVIDIA/apex); use layer_norm_backend='auto' or 'torch'"
        )
    return name


def layer_norm(hidden_size: int, eps: float, backend: str) -> nn.Module:
    if resolve_layer_norm(backend) == "apex":
        from apex.normalization import FusedLayerNorm

        return FusedLayerNorm(hidden_size, eps=eps)
    return nn.LayerNorm(hidden_size, eps=eps)
