"""``python -m megaphi.train`` with DeepSpeed's CPU accelerator told that it may run fp16 (tests only).

DeepSpeed's CPU accelerator reports fp16 as supported only where oneDNN has native fp16 kernels
(``torch.ops.mkldnn._is_mkldnn_fp16_supported()``, AVX512-FP16/AMX-FP16 CPUs), and the engine
refuses an fp16 config anywhere it says no. PyTorch itself computes fp16 matmuls and reductions on
any x86 CPU (slowly, through fp32), which is all the tests need to exercise the real fp16
machinery: ZeRO-2's fp16 optimizer, its fp32 master weights, the dynamic loss scaler and the
overflow check. The trainer keeps refusing fp16 with a ConfigError where the accelerator says no;
only this launcher overrides the answer, in each process it starts, before the trainer runs.

Usage (like the trainer): ``python -m tests.megaphi.train.fp16_cpu_trainer --config ... [overrides]``,
also under ``torchrun -m``.
"""
import sys


def main() -> int:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        raise SystemExit(f"this launcher is for DeepSpeed's CPU accelerator, not {accelerator.device_name()}")
    accelerator.is_fp16_supported = lambda: True  # the singleton every DeepSpeed module asks

    from megaphi.train import main as train_main

    return train_main()


if __name__ == "__main__":
    sys.exit(main())
