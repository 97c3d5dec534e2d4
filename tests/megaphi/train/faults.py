"""``python -m megaphi.train`` with faults injected on demand and, optionally, fp16 on DeepSpeed's CPU accelerator.

    python -m tests.megaphi.train.faults [--inf-grad-at 2,5] [--nan-loss-at 3] [--fp16-on-cpu] --config ... [overrides]

also under ``torchrun -m``. The faults prove the overflow and divergence handling: ``--inf-grad-at``
makes the first parameter's gradient inf at those steps (the loss stays finite), ``--nan-loss-at``
makes the loss NaN. They live here, in a Trainer subclass, not in the trainer's loop.

``--fp16-on-cpu``: DeepSpeed's CPU accelerator reports fp16 as supported only where oneDNN has native
fp16 kernels (``torch.ops.mkldnn._is_mkldnn_fp16_supported()``, AVX512-FP16/AMX-FP16 CPUs), and the
engine refuses an fp16 config anywhere it says no. PyTorch itself computes fp16 matmuls and
reductions on any x86 CPU (slowly, through fp32), which is all the tests need to exercise the real
fp16 machinery: ZeRO-2's fp16 optimizer, its fp32 master weights, the dynamic loss scaler and the
overflow check. The trainer keeps refusing fp16 with a ConfigError where the accelerator says no;
only this launcher overrides the answer, in each process it starts, before the trainer runs.
"""

import argparse
import sys

import torch

from megaphi.train.trainer import Trainer


class _InfGradient(torch.autograd.Function):
    """Adds zero to the loss; sends an inf gradient to ``param``."""

    @staticmethod
    def forward(ctx, param):
        ctx.save_for_backward(param)
        return (param.detach() * 0).sum().float()

    @staticmethod
    def backward(ctx, grad):
        (param,) = ctx.saved_tensors
        return torch.full_like(param, float("inf"))


def faulty_trainer(inf_grad_at: set[int], nan_loss_at: set[int]) -> type[Trainer]:
    class FaultyTrainer(Trainer):
        def forward(self, tokens):
            loss = super().forward(tokens)
            step = self.step + 1  # the step this micro batch belongs to
            if step in nan_loss_at:
                loss = loss * float("nan")
            if step in inf_grad_at:
                first = next(p for p in self.model.parameters() if p.requires_grad)
                loss = loss + _InfGradient.apply(first)
            return loss

    return FaultyTrainer


def steps(text: str) -> set[int]:
    return {int(s) for s in text.split(",") if s}


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--inf-grad-at", type=steps, default=set())
    parser.add_argument("--nan-loss-at", type=steps, default=set())
    parser.add_argument("--fp16-on-cpu", action="store_true")
    ours, rest = parser.parse_known_args()
    if ours.fp16_on_cpu:
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        if accelerator.device_name() != "cpu":
            raise SystemExit(f"--fp16-on-cpu is for DeepSpeed's CPU accelerator, not {accelerator.device_name()}")
        accelerator.is_fp16_supported = lambda: True  # the singleton every DeepSpeed module asks

    from megaphi.train import main as train_main

    return train_main(rest, trainer_class=faulty_trainer(ours.inf_grad_at, ours.nan_loss_at))


if __name__ == "__main__":
    sys.exit(main())
