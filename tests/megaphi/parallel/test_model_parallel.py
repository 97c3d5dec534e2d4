"""The tensor-parallel phi model is the same network as the unsharded one (real gloo processes)."""

import pytest
import torch

from megaphi import parallel
from megaphi.model import PhiForCausalLM
from tests.distributed import spawn
from tests.megaphi.tiny_phi import tiny_config

# tiny_phi's model, wider; vocab 1100 pads to 1152 at TP=1, 1280 at TP=2, 1536 at TP=4: every padding
# path is exercised.
CONFIG = dict(vocab_size=1100, hidden_size=64, intermediate_size=256, attn_backend="sdpa")


def _forward_backward(model: PhiForCausalLM) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Logits, loss, and gradients of loss + a logits-dependent term (both output paths get a gradient)."""
    gen = torch.Generator().manual_seed(7)
    input_ids = torch.randint(0, CONFIG["vocab_size"], (2, 16), generator=gen)
    labels = torch.randint(0, CONFIG["vocab_size"], (2, 16), generator=gen)
    labels[1, :3] = -100
    probe = torch.randn(2, 16, CONFIG["vocab_size"], generator=gen)
    logits = model(input_ids)
    loss = model(input_ids, labels=labels)
    (loss + (logits * probe).mean()).backward()
    return logits.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _expected_shard(full: torch.Tensor, param: torch.nn.Parameter, tp: int, rank: int) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    padded_rows = param.shape[dim] * tp
    if full.shape[dim] < padded_rows:  # vocab padded further at this TP size: extra rows are zero
        pad_shape = list(full.shape)
        pad_shape[dim] = padded_rows - full.shape[dim]
        full = torch.cat([full, full.new_zeros(pad_shape)], dim=dim)
    elif full.shape[dim] > padded_rows:
        full = full.narrow(dim, 0, padded_rows)
    return parallel.shard_tensor(full, dim, rank, tp, param.partition_stride)


def _assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().clamp(min=1e-12)
    error = (actual - expected).abs().max() / scale
    assert error <= 1e-5, f"{what}: max error {error:.2e} relative to max |value| {scale:.2e}"


def _tp_equals_unsharded(rank: int, world_size: int, tp: int) -> None:
    config = tiny_config(**CONFIG)
    parallel.seed_everything(0)
    reference = PhiForCausalLM(config)  # groups not initialised yet: the unsharded model
    ref_weights = {n: p.detach().clone() for n, p in reference.named_parameters()}
    ref_logits, ref_loss, ref_grads = _forward_backward(reference)

    parallel.initialize(tp)
    parallel.seed_everything(0)
    model = PhiForCausalLM(config)
    tp_rank = parallel.get_tensor_parallel_rank()
    params = dict(model.named_parameters())
    for name, param in params.items():  # same seed, same network, whatever the TP size
        assert torch.equal(param.detach(), _expected_shard(ref_weights[name], param, tp, tp_rank)), name
    logits, loss, grads = _forward_backward(model)
    _assert_close_relative(logits, ref_logits, "logits")
    _assert_close_relative(loss, ref_loss, "loss")
    for name, param in params.items():
        _assert_close_relative(grads[name], _expected_shard(ref_grads[name], param, tp, tp_rank), f"grad {name}")
    parallel.destroy()


@pytest.mark.slow
@pytest.mark.parametrize("tp", [2, 4])
def test_logits_loss_and_every_gradient_at_tp_equal_the_unsharded_model(tp):
    spawn(_tp_equals_unsharded, tp, tp)
