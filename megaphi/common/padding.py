"""Batches of token sequences of different lengths, padded to one width.

Decoding pads on the left: every row's last real token is in the last column, so one step appends
to all rows at once. A causal encoder read without a mask pads on the right: causal attention then
keeps the padding out of every real token. The mask marks real tokens (1) and padding (0).
"""

from __future__ import annotations

from typing import Literal

import torch


def pad_sequences(
    sequences: list[list[int]],
    pad_id: int = 0,
    *,
    side: Literal["left", "right"] = "left",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``[batch, longest]`` long tensors."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long)
    for row, ids in enumerate(sequences):
        columns = slice(longest - len(ids), longest) if side == "left" else slice(0, len(ids))
        input_ids[row, columns] = torch.tensor(ids, dtype=torch.long)
        mask[row, columns] = 1
    return input_ids.to(device), mask.to(device)
