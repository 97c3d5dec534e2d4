"""Attention backends (flash-attn, PyTorch SDPA, eager reference), masks and the KV cache.

All tensors are [batch, seq, heads, head_dim] ("bshd"), the layout the fused QKV projection produces
and flash-attn consumes; SDPA and eager see transposed views. Causality is bottom-right aligned:
query i of q_len attends to keys up to (k_len - q_len + i), which is what decoding with a cache needs.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_backend(name: str) -> str:
    """ "auto" stays "auto" (flash-attn per call where it applies, else SDPA) only when flash-attn is
    importable, otherwise it is "sdpa"; an explicit "flash" without flash-attn is an error."""
    if name == "auto":
        return "auto" if flash_attn_available() else "sdpa"
    if name == "flash" and not flash_attn_available():
        raise ValueError(
            "attn_backend='flash' needs the flash-attn package (pip install 'megaphi[gpu]' on a CUDA "
            "machine); use attn_backend='auto' or 'sdpa' elsewhere"
        )
    return name


class KVCache:
    """Preallocated keys/values for every layer; ``length`` tokens are filled (a Python int: no syncs)."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        max_seq_len: int,
        num_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (num_layers, batch_size, max_seq_len, num_heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.batch_size, self.max_seq_len, self.length = batch_size, max_seq_len, 0

    def check_room(self, batch_size: int, new_tokens: int) -> None:
        if batch_size != self.batch_size:
            raise ValueError(
                f"input batch size {batch_size} differs from the KV cache's {self.batch_size}; "
                f"create the cache with model.new_kv_cache({batch_size}, ...)"
            )
        if self.length + new_tokens > self.max_seq_len:
            raise ValueError(
                f"KV cache holds {self.length} of {self.max_seq_len} tokens and cannot take "
                f"{new_tokens} more; create it with a larger max_seq_len"
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k/v after the filled part; return all keys/values so far (views)."""
        end = self.length + k.shape[1]
        self.keys[layer, :, self.length : end] = k
        self.values[layer, :, self.length : end] = v
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens


def padding_causal_mask(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean [batch, 1, q_len, k_len] mask (True = may attend) from a [batch, k_len] 1/0 padding mask.

    A query always sees itself, so a padding query has one finite score instead of an all -inf row
    (which gives NaN that would then leak through the values of later layers).
    """
    k_len = attention_mask.shape[1]
    device = attention_mask.device
    query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    key_pos = torch.arange(k_len, device=device)[None, :]
    real_key = attention_mask.bool()[:, None, None, :]
    return (key_pos <= query_pos) & (real_key | (key_pos == query_pos))


def _bottom_right_causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= query_pos


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    from flash_attn import flash_attn_func

    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"the flash attention backend needs CUDA fp16/bf16 tensors, got {q.dtype} on {q.device}; "
            "use attn_backend='auto' or 'sdpa' for other devices and dtypes"
        )
    # flash-attn aligns causality bottom-right, so a decode step (q_len < k_len) is handled as is.
    return flash_attn_func(q, k, v, dropout_p=dropout_p, causal=True)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    q_len, k_len = q.shape[1], k.shape[1]
    is_causal = mask is None and q_len == k_len and q_len > 1
    if mask is None and 1 < q_len < k_len:
        mask = _bottom_right_causal_mask(q_len, k_len, q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
    )
    return out.transpose(1, 2)


def _eager(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    q_len, k_len = q.shape[1], k.shape[1]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is None and q_len > 1:
        mask = _bottom_right_causal_mask(q_len, k_len, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return torch.matmul(probs, v).transpose(1, 2)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Causal attention of q [b, q_len, h, d] over k, v [b, k_len, h, d] -> [b, q_len, h, d].

    ``mask`` (from ``padding_causal_mask``) replaces plain causality. flash-attn takes no arbitrary
    mask, so padded batches and CPU/fp32 tensors under "auto" run on SDPA, which PyTorch itself
    dispatches to a flash or memory-efficient kernel where it can.
    """
    if backend == "eager":
        return _eager(q, k, v, mask, dropout_p)
    if backend == "flash" or (
        backend == "auto" and mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    ):
        if mask is not None:
            raise ValueError(
                "the flash attention backend takes no padding mask; use attn_backend='auto' or 'sdpa' "
                "for left-padded batches"
            )
        return _flash(q, k, v, dropout_p)
    return _sdpa(q, k, v, mask, dropout_p)
