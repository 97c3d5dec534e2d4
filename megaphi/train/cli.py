"""Command line of the trainer (``python -m megaphi.train``); the work is done by :func:`megaphi.train.trainer.train`.

Works the same under ``python -m megaphi.train`` (one process), ``torchrun -m megaphi.train``,
``deepspeed --module megaphi.train``, ``mpirun`` and ``srun``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from megaphi.common.cli import EXIT_USER_ERROR as EXIT_BAD_INPUT

EXIT_STOPPED = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megaphi.train",
        description="Train a phi model with DeepSpeed ZeRO-2 and tensor parallelism.",
        epilog="Exit status: 0 done, 2 bad config or input, 3 stopped because training diverged "
        "(the message names the last good checkpoint).",
    )
    parser.add_argument("--config", required=True, help="YAML recipe, e.g. configs/phi_tiny_cpu.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.field=value",
        help="dotted overrides applied after the YAML, e.g. optim.lr=3e-4 train.steps=100",
    )
    parser.add_argument(
        "--resume",
        choices=["auto", "never"],
        default="never",
        help="auto: continue from <checkpoint dir>/latest when it exists (default: never)",
    )
    # The deepspeed launcher appends --local_rank; the rank comes from the environment instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None, trainer_class: type | None = None) -> int:
    """Run the command; ``trainer_class`` (a :class:`megaphi.train.trainer.Trainer` subclass) is for tests."""
    args = _parser().parse_args(argv)
    from megaphi.common.cli import report_user_error, user_error_message
    from megaphi.common.errors import UserError
    from megaphi.config import load_config
    from megaphi.train.config import TrainConfig
    from megaphi.train.launch_env import apply_to_environ
    from megaphi.train.preflight import PreflightError
    from megaphi.train.run_lock import die_with_launcher
    from megaphi.train.trainer import Trainer, TrainingStopped, train

    try:
        # First, so that RANK is this process's rank under srun and mpirun too (they do not export
        # it); the trainer joins the process group with this same launch.
        launch = apply_to_environ()
    except UserError as e:
        return report_user_error(str(e))  # no rank known: every process says it
    is_rank0 = launch.rank == 0

    def report(prefix: str, error: Exception | str, job_wide: bool = False) -> None:
        # Errors found before the process group exists are the same on every rank, and so are the
        # preflight's (rank 0 checked, every rank raised its verdict) and a decision to stop (taken
        # from all-reduced losses and overflow flags): rank 0 says it. Other errors may be one
        # rank's own, so each failing rank speaks for itself.
        import torch.distributed as dist

        if not job_wide and dist.is_initialized() and dist.get_world_size() > 1:
            print(f"{prefix} (rank {dist.get_rank()}): {error}", file=sys.stderr, flush=True)
        elif is_rank0:
            print(f"{prefix}: {error}", file=sys.stderr, flush=True)

    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        die_with_launcher(launch)  # a killed torchrun or deepspeed launcher takes this worker with it
        result = train(cfg, launch, resume=args.resume == "auto", trainer_class=trainer_class or Trainer)
    except (UserError, OSError) as e:
        message = user_error_message(e)
        if message is None:
            raise
        report("error", message, job_wide=isinstance(e, PreflightError))
        return EXIT_BAD_INPUT
    except TrainingStopped as e:
        report("training stopped", e, job_wide=True)
        import torch.distributed as dist

        if dist.is_initialized():
            # Every rank stops at the same step. torchrun and the deepspeed launcher kill the other
            # ranks as soon as one exits non-zero: hold the others until rank 0 has said why.
            dist.barrier()
        return EXIT_STOPPED
    if is_rank0:
        print(
            f"megaphi.train: done at step {result.final_step} ({result.consumed_samples} samples); "
            f"checkpoint {result.last_checkpoint}",
            flush=True,
        )
    return 0
