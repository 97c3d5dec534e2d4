"""Everything megaphi does with DeepSpeed beyond its documented API, in one place.

Checked against DeepSpeed 0.19.8 (``CHECKED_DEEPSPEED_VERSIONS``). On another version, read each
function here against DeepSpeed's source before trusting a run:

- ``apply_loss_scale_policy``: the fp16 dynamic loss scaler's attributes
  (``deepspeed/runtime/fp16/loss_scaler.py``: ``scale_window``, ``min_scale``, ``cur_scale``,
  ``delayed_shift``, ``cur_hysteresis``, ``raise_error_at_min_scale``), which DeepSpeed pickles into
  the ZeRO optimizer state and restores, settings included.
- ``loss_scale``: ``engine.optimizer.loss_scale``.
- ``load_zero_optimizer_states``: ``engine._get_all_zero_checkpoints``,
  ``engine._get_zero_param_shapes`` and the ZeRO-1/2 optimizer's ``load_state_dict(state_dict_list=...)``
  with the elastic checkpoint layout (``deepspeed/runtime/zero/stage_1_and_2.py``,
  ``deepspeed/checkpoint/constants.py``), to resume on another data-parallel size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from megaphi.convert.layout import CheckpointError
from megaphi.train.config import TrainSection

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

CHECKED_DEEPSPEED_VERSIONS = ("0.19.8",)


def unchecked_version_warning() -> str | None:
    """A one-line warning when the installed DeepSpeed is not one this module was checked against."""
    import deepspeed

    if deepspeed.__version__ in CHECKED_DEEPSPEED_VERSIONS:
        return None
    return (
        f"warning: DeepSpeed {deepspeed.__version__} is installed; megaphi.train.deepspeed_compat was checked "
        f"against {', '.join(CHECKED_DEEPSPEED_VERSIONS)} (loss-scaler policy, elastic ZeRO resume)"
    )


def apply_loss_scale_policy(engine: DeepSpeedEngine, train: TrainSection) -> None:
    """Give fp16's dynamic loss scaler this run's policy, keeping its state (current scale, overflow history).

    Called after building the engine and again after loading a checkpoint: DeepSpeed pickles the
    whole scaler object into the ZeRO optimizer state and restores it, settings included, so without
    this a resumed run would silently keep the saving run's window, minimum and hysteresis.
    """
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    if scaler is None or not getattr(scaler, "dynamic", False):
        return  # bf16/fp32 (or a static scale): nothing to steer
    scaler.scale_window = train.loss_scale_window
    scaler.min_scale = train.min_loss_scale
    scaler.cur_scale = max(scaler.cur_scale, train.min_loss_scale)
    scaler.delayed_shift = train.loss_scale_hysteresis
    scaler.cur_hysteresis = min(scaler.cur_hysteresis, train.loss_scale_hysteresis)
    # DeepSpeed would raise from inside step() at the first overflow at the minimum scale; the
    # trainer's own guard (train.max_steps_at_min_loss_scale) stops cleanly with a checkpoint.
    scaler.raise_error_at_min_scale = False


def loss_scale(engine: DeepSpeedEngine) -> float:
    """The fp16 loss scale the next step will use; 1 for bf16 and fp32."""
    return float(getattr(engine.optimizer, "loss_scale", 1.0))


def regroup_zero_partitions(saved: list[dict[str, Any]], new_size: int) -> list[dict[str, Any]]:
    """The ZeRO-1/2 optimizer states of the saving run's data-parallel ranks, regrouped for ``new_size`` ranks.

    In DeepSpeed's elastic checkpoint format each rank stores its slice of every flat parameter
    group (fp32 master weights and Adam moments) without padding, and the optimizer's loader
    concatenates the slices of all entries and re-splits them for the current data-parallel size,
    but it reads the entry at the current rank's index for scalar state, so it cannot grow the
    number of ranks. Merging all slices into the first entry and adding empty entries for the other
    ranks gives it one entry per rank, with the same concatenation.
    """
    from deepspeed.checkpoint.constants import (
        BASE_OPTIMIZER_STATE,
        BASE_OPTIMIZER_STATE_STEP,
        SINGLE_PARTITION_OF_FP32_GROUPS as FP32,
    )

    first = saved[0]
    if not isinstance(first[BASE_OPTIMIZER_STATE], list):
        raise CheckpointError(
            "the checkpoint's ZeRO optimizer state is not elastic (zero_optimization."
            "elastic_checkpoint was false when it was saved), so it cannot change data-parallel "
            "size; resume on the same number of data-parallel ranks"
        )
    merged_fp32 = [torch.cat([sd[FP32][g] for sd in saved]) for g in range(len(first[FP32]))]
    merged_state, empty_state = [], []
    for g, group_state in enumerate(first[BASE_OPTIMIZER_STATE]):
        merged, empty = {}, {}
        for key, value in group_state.items():
            parts = [sd[BASE_OPTIMIZER_STATE][g][key] for sd in saved]
            sliced = all(torch.is_tensor(p) and p.shape == sd[FP32][g].shape for p, sd in zip(parts, saved))
            merged[key] = torch.cat(parts) if sliced else value
            empty[key] = value[:0] if sliced else value
        merged_state.append(merged)
        empty_state.append(empty)
    # The loader also wants a group-level step, which torch's AdamW keeps per parameter (in the state
    # merged above) instead; None is what the groups of a torch optimizer hold.
    step = first.get(BASE_OPTIMIZER_STATE_STEP)
    whole = dict(first, **{BASE_OPTIMIZER_STATE: merged_state, FP32: merged_fp32, BASE_OPTIMIZER_STATE_STEP: step})
    nothing = dict(whole, **{BASE_OPTIMIZER_STATE: empty_state, FP32: [t[:0] for t in merged_fp32]})
    return [whole] + [nothing] * (new_size - 1)


def load_zero_optimizer_states(engine: DeepSpeedEngine, root: str, tag: str, where: str) -> None:
    """Load the ZeRO optimizer partitions of checkpoint ``root/tag``, regrouped for this run's data-parallel size.

    DeepSpeed's own path refuses a new data-parallel size for ZeRO stages 1 and 2, and cannot read
    its elastic format back for a torch optimizer. ``where`` names this rank's shard set in errors.
    """
    saved = engine._get_all_zero_checkpoints(root, tag)
    if saved is None:
        raise CheckpointError(f"{root}/{tag} has no ZeRO optimizer states for {where}; the checkpoint is incomplete")
    engine.optimizer.load_state_dict(
        state_dict_list=regroup_zero_partitions(saved, engine.dp_world_size),
        load_optimizer_states=True,
        load_from_fp32_weights=True,
        param_shapes=engine._get_zero_param_shapes(),
    )
