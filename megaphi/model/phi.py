"""The phi-1 architecture on tensor-parallel layers.

Each block is x + dropout(attn(ln(x))) + dropout(mlp(ln(x))): one LayerNorm shared by attention and
MLP running in parallel, partial rotary on q/k, biases everywhere, an untied lm_head with bias.
Under tensor parallelism the fused QKV projection and fc1 are column-parallel (each rank owns whole
heads / MLP columns), dense and fc2 are row-parallel (one all-reduce per branch), and the
vocabulary of the embedding and lm_head is split, so the loss never gathers full logits.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from megaphi.model.attention import KVCache, attend, padding_causal_mask, resolve_backend
from megaphi.model.config import PhiConfig
from megaphi.model.layer_norm import layer_norm
from megaphi.model.loss import causal_lm_loss, resolve_cross_entropy
from megaphi.model.rotary import RotaryEmbedding, apply_rotary, rotary_qkv
from megaphi.parallel.collectives import copy_to_tensor_parallel_region, gather_from_tensor_parallel_region
from megaphi.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    divide,
    padded_vocab_size,
)
from megaphi.parallel.random import get_rng_tracker
from megaphi.parallel.state import get_tensor_parallel_world_size

_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


class PhiAttention(nn.Module):
    def __init__(self, config: PhiConfig, layer_idx: int) -> None:
        super().__init__()
        tp = get_tensor_parallel_world_size()
        self.layer_idx = layer_idx
        self.num_heads = divide(config.num_attention_heads, tp, "num_attention_heads")
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_dropout
        self.backend = resolve_backend(config.attn_backend)
        hidden, std = config.hidden_size, config.initializer_range
        # One GEMM for q, k and v; stride 3 gives each rank [its q heads; its k heads; its v heads].
        self.qkv_proj = ColumnParallelLinear(hidden, 3 * hidden, input_is_copied=True, partition_stride=3, init_std=std)
        self.dense = RowParallelLinear(hidden, hidden, init_std=std)

    def forward(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None, kv_cache: KVCache | None
    ) -> torch.Tensor:
        batch, seq, _ = h.shape
        qkv = self.qkv_proj(h).view(batch, seq, 3, self.num_heads, self.head_dim)
        if torch.compiler.is_compiling():
            q, k, v = qkv.unbind(dim=2)  # the compiler fuses the composite rotary into one kernel
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        else:
            # v stays a view of the projection: SDPA and flash-attn take strided heads as they are.
            q, k, v = rotary_qkv(qkv, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        dropout_p = self.dropout_p if self.training else 0.0
        # Heads are sharded, so their dropout draws from the per-TP-rank stream.
        with get_rng_tracker().fork() if dropout_p > 0 else contextlib.nullcontext():
            out = attend(q, k, v, backend=self.backend, mask=mask, dropout_p=dropout_p)
        return self.dense(out.reshape(batch, seq, self.num_heads * self.head_dim))


class PhiMLP(nn.Module):
    def __init__(self, config: PhiConfig) -> None:
        super().__init__()
        std = config.initializer_range
        self.fc1 = ColumnParallelLinear(
            config.hidden_size, config.intermediate_size, input_is_copied=True, init_std=std
        )
        self.fc2 = RowParallelLinear(config.intermediate_size, config.hidden_size, init_std=std)
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(h)))


class PhiDecoderLayer(nn.Module):
    def __init__(self, config: PhiConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = layer_norm(config.hidden_size, config.layer_norm_eps, config.layer_norm_backend)
        self.self_attn = PhiAttention(config, layer_idx)
        self.mlp = PhiMLP(config)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        # One gradient all-reduce for the LayerNorm output feeding both column-parallel branches.
        h = copy_to_tensor_parallel_region(self.input_layernorm(x))
        attn_out = self.resid_dropout(self.self_attn(h, cos, sin, mask, kv_cache))
        mlp_out = self.resid_dropout(self.mlp(h))
        return attn_out + mlp_out + x


def _checkpointed(layer: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
    """Run ``layer`` under activation checkpointing, replaying the same model-parallel dropout masks.

    torch.utils.checkpoint restores the default generators for the recomputation; the model-parallel
    stream lives in the tracker, so its state at forward time is restored here.
    """
    tracker = get_rng_tracker()
    forward_states = tracker.get_states()
    calls = 0

    def run(*inputs: torch.Tensor | None) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return layer(*inputs)
        current = tracker.get_states()
        tracker.set_states(forward_states)
        try:
            return layer(*inputs)
        finally:
            tracker.set_states(current)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)


class PhiModel(nn.Module):
    def __init__(self, config: PhiConfig) -> None:
        super().__init__()
        tp = get_tensor_parallel_world_size()
        self.padded_vocab_size = padded_vocab_size(config.vocab_size, config.make_vocab_size_divisible_by, tp)
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, self.padded_vocab_size, config.hidden_size, init_std=config.initializer_range
        )
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList(PhiDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = layer_norm(config.hidden_size, config.layer_norm_eps, config.layer_norm_backend)
        self.rotary = RotaryEmbedding(config.rotary_dim, config.max_position_embeddings, config.rope_theta)
        self.activation_checkpointing = config.activation_checkpointing

    @property
    def attention(self) -> PhiAttention:
        """The first layer's attention; every layer has the same heads and backend."""
        layer = self.layers[0]
        assert isinstance(layer, PhiDecoderLayer)
        return layer.self_attn

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq = input_ids.shape
        past = 0 if kv_cache is None else kv_cache.length
        if kv_cache is not None:
            kv_cache.check_room(batch, seq)
        x = self.embed_dropout(self.embed_tokens(input_ids))
        # RoPE depends only on position differences, so left padding needs no position shift.
        if position_ids is None:
            cos, sin = self.rotary.for_range(past, seq, x.device, x.dtype)
        else:
            cos, sin = self.rotary.for_positions(position_ids, x.dtype)
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (batch, past + seq):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but must be "
                    f"[batch, cached + new tokens] = [{batch}, {past + seq}]"
                )
            mask = padding_causal_mask(attention_mask, seq)
        checkpoint = self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for layer in self.layers:
            if checkpoint:
                x = _checkpointed(layer, x, cos, sin, mask)
            else:
                x = layer(x, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(seq)
        return self.final_layernorm(x)


class PhiForCausalLM(nn.Module):
    """phi-1 language model. Runs unsharded in a plain process, tensor-parallel once groups exist."""

    def __init__(self, config: PhiConfig) -> None:
        super().__init__()
        self.config = config
        self.model = PhiModel(config)
        self.lm_head = ColumnParallelLinear(
            config.hidden_size,
            self.model.padded_vocab_size,
            init_std=config.initializer_range,
            valid_out_features=config.vocab_size,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab_size], or with ``labels`` the mean cross-entropy.

        ``labels`` [batch, seq] are already aligned with the inputs (labels[:, t] is the token that
        should follow input_ids[:, :t+1]; no shift is applied); -100 marks positions to ignore.
        With ``kv_cache`` the inputs continue the cached sequence; ``attention_mask`` [batch,
        cached + new] marks real tokens with 1 and left padding with 0.
        """
        hidden = self.model(input_ids, position_ids=position_ids, kv_cache=kv_cache, attention_mask=attention_mask)
        if labels is None:
            logits = gather_from_tensor_parallel_region(self.lm_head(hidden))
            return logits[..., : self.config.vocab_size]
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
        return causal_lm_loss(
            hidden, self.lm_head, labels, vocab_size=self.config.vocab_size, impl=self.config.cross_entropy
        )

    def kernel_choices(self, device: torch.device) -> str:
        """What runs attention, LayerNorm and the loss on ``device``, for the start-up line."""
        attention = {
            "auto": "flash-attn for fp16/bf16 on CUDA, else SDPA",
            "flash": "flash-attn",
            "sdpa": "SDPA",
            "eager": "eager",
        }[self.model.attention.backend]
        norm = type(self.model.final_layernorm)
        loss = resolve_cross_entropy(self.config.cross_entropy, device)
        return (
            f"attention {attention}, layer norm {norm.__module__.split('.')[0]} {norm.__name__}, cross-entropy {loss}"
        )

    def new_kv_cache(
        self,
        batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_seq_len`` tokens (this rank's heads)."""
        if max_seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"max_seq_len={max_seq_len} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        weight = self.lm_head.weight
        attn = self.model.attention
        return KVCache(
            len(self.model.layers),
            batch_size,
            max_seq_len,
            attn.num_heads,
            attn.head_dim,
            dtype or weight.dtype,
            device or weight.device,
        )
