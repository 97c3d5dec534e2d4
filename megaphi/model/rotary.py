"""Partial rotary position embedding (GPT-NeoX rotate-half form, as transformers' Phi applies it)."""

from __future__ import annotations

from typing import Any

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
            inv_freq = 1.0 / (
                self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim)
            )
            positions = torch.arange(self.max_positions, device=device).float()
            freqs = positions[:, None] * inv_freq[None, :]
            angles = torch.cat((freqs, freqs), dim=-1)
            # Computed in fp32, then cast once: the per-step cost is a slice or a gather.
            self._tables[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self._tables[key]

    def for_range(
        self, start: int, length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [length, 1, dim] for positions start .. start+length-1."""
        if start + length > self.max_positions:
            raise ValueError(
                f"positions up to {start + length - 1} exceed max_position_embeddings="
                f"{self.max_positions}; shorten the input or raise max_position_embeddings"
            )
        cos, sin = self._table(device, dtype)
        return cos[start : start + length, None, :], sin[start : start + length, None, :]

    def for_positions(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [batch, seq, 1, dim] for explicit position ids [batch, seq]."""
        cos, sin = self._table(position_ids.device, dtype)
        return cos[position_ids].unsqueeze(-2), sin[position_ids].unsqueeze(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x [batch, seq, heads, head_dim]; pass the rest through.

    The composite form: under torch.compile it fuses into one kernel. Eager training uses
    ``rotary_qkv``, which does the same rotation in five kernels and one write per element.
    """
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> None:
    """out = x with its first cos.shape[-1] dims rotated by +angle (sign 1) or -angle (sign -1).

    With cos = cat(c, c) and sin = cat(s, s) the rotate-half form is, per pair (x1, x2) of halves:
    y1 = x1 c - x2 s, y2 = x2 c + x1 s. Each result is written once, straight into ``out`` (which
    may be a strided slice): no temporaries, no slice assignment that autograd would have to undo.
    """
    half = cos.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    torch.mul(x1, c, out=out[..., :half]).addcmul_(x2, s, value=-sign)
    torch.mul(x2, c, out=out[..., half : 2 * half]).addcmul_(x1, s, value=sign)
    out[..., 2 * half :].copy_(x[..., 2 * half :])


class _RotaryQKV(torch.autograd.Function):
    """Rotary on the q and k heads of a fused [batch, seq, 3, heads, head_dim] projection.

    q and k come out as fresh tensors (the projection's output is never written), v as a view of
    it. A rotation's gradient is the inverse rotation, so nothing but cos/sin is saved, and the
    backward writes the q, k and v gradients into one fresh buffer: no CopySlices, no accumulation.
    """

    @staticmethod
    def forward(
        ctx: Any, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k = torch.empty_like(qkv[:, :, 0]), torch.empty_like(qkv[:, :, 1])
        _rotate_into(q, qkv[:, :, 0], cos, sin, 1.0)
        _rotate_into(k, qkv[:, :, 1], cos, sin, 1.0)
        ctx.save_for_backward(cos, sin)
        return q, k, qkv[:, :, 2]

    @staticmethod
    def backward(
        ctx: Any, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        shape = grad_q.shape[:2] + (3,) + grad_q.shape[2:]
        grad = torch.empty(shape, dtype=grad_q.dtype, device=grad_q.device)
        _rotate_into(grad[:, :, 0], grad_q, cos, sin, -1.0)
        _rotate_into(grad[:, :, 1], grad_k, cos, sin, -1.0)
        grad[:, :, 2].copy_(grad_v)
        return grad, None, None


def rotary_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q and k of ``qkv`` [batch, seq, 3, heads, head_dim] with rotary applied, and v; qkv is not modified.

    ``cos``/``sin`` as ``RotaryEmbedding`` returns them ([seq, 1, dim] or [batch, seq, 1, dim]).
    """
    return _RotaryQKV.apply(qkv, cos, sin)
