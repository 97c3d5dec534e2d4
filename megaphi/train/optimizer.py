"""AdamW: NVIDIA apex's FusedAdam (multi-tensor, AdamW mode) where it is installed on a GPU machine,
otherwise torch's AdamW (its fused multi-tensor kernel on GPU, the plain loop on CPU)."""

from __future__ import annotations

import importlib.util

import torch

from megaphi.train.config import OptimSection

OPTIMIZER_BACKENDS = ("auto", "torch", "apex")


def apex_optimizers_available() -> bool:
    return importlib.util.find_spec("apex") is not None


def resolve_optimizer(name: str, on_gpu: bool) -> str:
    """ "auto" is apex's FusedAdam on a GPU when apex is importable, else torch's AdamW; an explicit
    "apex" that cannot run is an error, never a silent fallback."""
    if name not in OPTIMIZER_BACKENDS:
        raise ValueError(f"optim.backend={name!r} must be one of {OPTIMIZER_BACKENDS}")
    if name == "auto":
        return "apex" if on_gpu and apex_optimizers_available() else "torch"
    if name == "apex":
        if not apex_optimizers_available():
            raise ValueError(
                "optim.backend=apex needs NVIDIA apex built with its CUDA extensions "
                "(github.com/NVIDIA/apex); use optim.backend=auto or torch"
            )
        if not on_gpu:
            raise ValueError("optim.backend=apex runs on CUDA only; use optim.backend=auto or torch on this machine")
    return name


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices only; biases and LayerNorm (all 1-D tensors) are exempt."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, optim: OptimSection, on_gpu: bool) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer and a few words naming it, for the start-up line."""
    groups = param_groups(model, optim.weight_decay)
    lr, betas, eps = optim.lr, (optim.beta1, optim.beta2), optim.eps
    if resolve_optimizer(optim.backend, on_gpu) == "apex":
        from apex.optimizers import FusedAdam

        return FusedAdam(groups, lr=lr, betas=betas, eps=eps, adam_w_mode=True), "apex FusedAdam (AdamW mode)"
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=on_gpu)
    return optimizer, "torch AdamW" + (" (fused)" if on_gpu else "")
