"""Partial rotary position embedding (GPT-NeoX rotate-half form, as transformers' Phi applies it)."""
from __future__ import annotations

import torch


class RotaryEmbedding:
    """cos/sin tables for the first ``dim`` dims of each head, cached per device and dtype.

    Not an nn.Module on purpose: the tables are derived data (no state-dict entries), rebuilt
    lazily wherever the model runs, including after it is materialised from the meta device.
    """

    def __init__(self, dim: int, max_positions: int, theta: float) -> None:
        self.dim, self.max_positions, self.theta = dim, max_positions, theta
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._tables:
            inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.int64, device=device)
                                             .float() / self.dim))
            positions = torch.arange(self.max_positions, device=device).float()
            freqs = positions[:, None] * inv_freq[None, :]
            angles = torch.cat((freqs, freqs), dim=-1)
            # Computed in fp32, then cast once: the per-step cost is a slice or a gather.
            self._tables[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self._tables[key]

    def for_range(self, start: int, length: int, device: torch.device, dtype: torch.dtype):
        """cos, sin of shape [length, 1, dim] for positions start .. start+length-1."""
        if start + length > self.max_positions:
            raise ValueError(f"positions up to {start + length - 1} exceed max_position_embeddings="
                             f"{self.max_positions}; shorten the input or raise max_position_embeddings")
        cos, sin = self._table(device, dtype)
        return cos[start:start + length, None, :], sin[start:start + length, None, :]

    def for_positions(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """cos, sin of shape [batch, seq, 1, dim] for explicit position ids [batch, seq]."""
        cos, sin = self._table(position_ids.device, dtype)
        return cos[position_ids].unsqueeze(-2), sin[position_ids].unsqueeze(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x [batch, seq, heads, head_dim]; pass the rest through."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)
