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
    """Rotate the first cos.shape[-1] dims of x [batch, seq, heads, head_dim]; pass the rest through.

    The composite form: under torch.compile it fuses into one kernel. Eager training uses
    ``rotate_qk_``, which does the same rotation in place at a fraction of the memory traffic.
    """
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


def _rotate_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> None:
    """Rotate the first cos.shape[-1] dims of ``x`` in place by +angle (sign 1) or -angle (sign -1).

    With cos = cat(c, c) and sin = cat(s, s) the rotate-half form is, per pair (x1, x2) of halves:
    y1 = x1 c - x2 s, y2 = x2 c + x1 s. Five kernels over a quarter of the head each, against eight
    over whole heads (slices, neg, two cats, three products and a sum) for the composite form.
    """
    half = cos.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    x1, x2 = x[..., :half], x[..., half:2 * half]
    x1_sin = x1 * s
    x1.mul_(c).addcmul_(x2, s, value=-sign)
    x2.mul_(c).add_(x1_sin, alpha=sign)


class _RotateQK(torch.autograd.Function):
    """Rotary on the q and k heads of a fused [batch, seq, 3, heads, head_dim] projection, in place.

    A rotation's gradient is the inverse rotation, so nothing but cos/sin is saved. The backward
    also works in place: the incoming gradient is the fresh tensor that ``unbind``'s backward stacks
    from the q, k and v gradients, owned by nobody else.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over the q/k axis as well as the heads
        _rotate_(qkv[:, :, :2], cos, sin, 1.0)
        ctx.mark_dirty(qkv)
        ctx.save_for_backward(cos, sin)
        return qkv

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        _rotate_(grad[:, :, :2], cos, sin, -1.0)
        return grad, None, None


def rotate_qk_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary to q and k of ``qkv`` [batch, seq, 3, heads, head_dim] in place; v is untouched.

    ``cos``/``sin`` as ``RotaryEmbedding`` returns them ([seq, 1, dim] or [batch, seq, 1, dim]).
    Only for a ``qkv`` that nothing else has used yet (the projection's fresh output), consumed by
    ``unbind(dim=2)``.
    """
    return _RotateQK.apply(qkv, cos, sin)
