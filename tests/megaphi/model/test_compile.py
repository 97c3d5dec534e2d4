"""Compiled training (each block, or the whole model) computes what eager training computes.

Inductor draws dropout masks from its own generator unless ``fallback_random`` is set; with it set,
compiled and eager runs draw the same masks, so even with dropout and activation checkpointing the
losses and gradients must agree to fp32 rounding.
"""

import pytest
import torch
import torch._inductor.config

from megaphi import parallel
from megaphi.parallel import get_rng_tracker
from megaphi.model import PhiForCausalLM
from megaphi.model.compile import compile_model
from tests.distributed import spawn
from tests.megaphi.tiny_phi import tiny_config

pytestmark = pytest.mark.slow

# tiny_phi's model with dropout everywhere, 2 heads, a 16-token context
CONFIG = dict(
    vocab_size=64,
    num_attention_heads=2,
    max_position_embeddings=16,
    attn_backend="sdpa",
    resid_pdrop=0.3,
    attention_dropout=0.3,
    embd_pdrop=0.3,
)
TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def _unseeded_rng_streams_afterwards():
    """seed_everything adds a model-parallel stream to the process-wide tracker; later tests expect none."""
    yield
    get_rng_tracker().reset()


def loss_and_grads(mode: str, checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    parallel.seed_everything(0)
    model = compile_model(PhiForCausalLM(tiny_config(**CONFIG, activation_checkpointing=checkpointing)), mode)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def assert_same(actual, expected) -> None:
    torch.testing.assert_close(actual[0], expected[0], rtol=TOLERANCE, atol=TOLERANCE)
    assert actual[1].keys() == expected[1].keys()  # compiling in place keeps every parameter name
    for name, grad in actual[1].items():
        torch.testing.assert_close(grad, expected[1][name], rtol=TOLERANCE, atol=TOLERANCE, msg=name)


@pytest.mark.parametrize("mode", ["blocks", "model"])
def test_compiled_loss_and_gradients_equal_eager_with_dropout_and_activation_checkpointing(mode):
    with torch._inductor.config.patch(fallback_random=True):
        eager = loss_and_grads("none", checkpointing=False)
        assert_same(loss_and_grads(mode, checkpointing=False), eager)
        assert_same(loss_and_grads(mode, checkpointing=True), eager)


def test_unknown_compile_mode_is_refused():
    with pytest.raises(ValueError, match="compile='all' must be one of"):
        compile_model(torch.nn.Linear(2, 2), "all")


def _compiled_blocks_at_tp2_equal_eager(rank: int, world_size: int) -> None:
    with torch._inductor.config.patch(fallback_random=True):
        parallel.initialize(world_size)
        for mode in ("none", "blocks"):
            parallel.seed_everything(0)
            model = compile_model(PhiForCausalLM(tiny_config(**CONFIG)), mode)
            ids = torch.randint(0, CONFIG["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(0))
            loss = model(ids, labels=ids)
            loss.backward()
            result = loss.detach(), {name: p.grad for name, p in model.named_parameters()}
            if mode == "none":
                eager = result
        assert_same(result, eager)
        parallel.destroy()


def test_compiled_blocks_under_tensor_parallelism_equal_eager():
    spawn(_compiled_blocks_at_tp2_equal_eager, 2)
