"""Dropout randomness is shared where activations are replicated and distinct where they are sharded."""

import pytest
import torch
import torch.distributed as dist

from megaphi import parallel
from megaphi.model import PhiForCausalLM
from tests.distributed import spawn
from tests.megaphi.tiny_phi import tiny_config


def test_fork_without_seeds_is_plain_dropout_in_a_single_process():
    tracker = parallel.RNGStatesTracker()
    torch.manual_seed(5)
    with tracker.fork():
        a = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(a, torch.rand(3))


def test_states_round_trip_replays_the_same_stream():
    tracker = parallel.RNGStatesTracker()
    tracker.add("stream", 123)
    saved = tracker.get_states()
    default_before = torch.get_rng_state()
    with tracker.fork("stream"):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), default_before)  # the default generator is untouched
    tracker.set_states(saved)
    with tracker.fork("stream"):
        assert torch.equal(torch.rand(4), first)
    with pytest.raises(ValueError, match="already exists"):
        tracker.add("stream", 1)


def _both_ranks(x: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(x) for _ in range(2)]
    dist.all_gather(out, x.contiguous(), group=parallel.get_tensor_parallel_group())
    return out


def _streams_and_dropout(rank: int, world_size: int) -> None:
    parallel.initialize(2)
    with pytest.raises(RuntimeError, match="seed_everything"):
        with parallel.get_rng_tracker().fork():
            pass
    parallel.seed_everything(0)
    replicated = torch.rand(16)
    with parallel.get_rng_tracker().fork():
        sharded = torch.rand(16)
    a, b = _both_ranks(replicated)
    assert torch.equal(a, b)
    a, b = _both_ranks(sharded)
    assert not torch.equal(a, b)

    sizes = dict(vocab_size=256, hidden_size=64, intermediate_size=128, max_position_embeddings=32)
    config = tiny_config(**sizes, attn_backend="sdpa", resid_pdrop=0.1, embd_pdrop=0.1, attention_dropout=0.1)
    input_ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    losses, grads = [], []
    for checkpointing in (False, True):
        parallel.seed_everything(1)
        config.activation_checkpointing = checkpointing
        model = PhiForCausalLM(config)  # training mode: all three dropouts on
        logits = model(input_ids)
        # Replicated dropout (embedding, residual) must agree across TP ranks or their activations diverge.
        a, b = _both_ranks(logits.detach())
        assert torch.equal(a, b)
        loss = model(input_ids, labels=input_ids)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameters()])
    # Recomputation under activation checkpointing replays the same head-dropout masks.
    assert torch.equal(losses[0], losses[1])
    for with_ckpt, without in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(with_ckpt, without)
    parallel.destroy()


@pytest.mark.slow
def test_tp_ranks_share_the_default_stream_and_differ_on_the_model_parallel_stream():
    spawn(_streams_and_dropout, 2)
