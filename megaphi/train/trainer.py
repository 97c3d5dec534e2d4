"""The training loop: data -> DeepSpeed engine -> metrics, validation, checkpoints, divergence guards.

Steps are numbered from 1: "step 5" is the fifth optimizer step, and a checkpoint tagged ``step5``
holds the state after it. Resuming continues at the step after the checkpoint, with the data
sampler positioned at the checkpoint's consumed-sample count and every RNG stream restored.

    start, locks = preflight(cfg, world_size, resume)   # checks once on rank 0, shared with all
    result = Trainer(cfg, start).fit()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from megaphi import parallel
from megaphi.common.files import atomic_write_text
from megaphi.config import ConfigError, config_to_dict
from megaphi.convert.checkpoint import load_model_checkpoint
from megaphi.convert.layout import CheckpointError, reshard
from megaphi.data.blended import BlendedDataset
from megaphi.data.builder import build_train_valid_datasets
from megaphi.data.gpt_dataset import DatasetConfigError, GPTDataset
from megaphi.data.indexed import IndexedDatasetError
from megaphi.data.loader import build_data_loader
from megaphi.train import checkpoint as ckpt
from megaphi.train.config import TrainConfig
from megaphi.train.deepspeed_compat import apply_loss_scale_policy, loss_scale, unchecked_version_warning
from megaphi.train.engine import (
    build_engine,
    build_model,
    full_parameter_count,
    init_distributed,
    model_flops_per_token,
    on_gpu,
    peak_tflops,
    set_learning_rate,
    training_device,
)
from megaphi.train.guards import Guards, TrainingStopped
from megaphi.train.launch_env import LaunchEnv
from megaphi.train.metrics import MetricsLogger
from megaphi.train.preflight import StartPlan, preflight
from megaphi.train.schedule import learning_rate, schedule_change

__all__ = ["Trainer", "TrainResult", "TrainingStopped", "train"]


@dataclass
class TrainResult:
    final_step: int
    consumed_samples: int
    losses: list[float] = field(default_factory=list)  # per step run in this process
    last_checkpoint: Path | None = None


class Trainer:
    """One training job on this rank: the engine, the data, the step counters, metrics and guards.

    Collective: every rank builds one and calls :meth:`fit`. Tests that need faults subclass it and
    override :meth:`forward` (see tests/megaphi/train/faults.py).
    """

    def __init__(self, cfg: TrainConfig, start: StartPlan) -> None:
        self.cfg, self.start, self.plan = cfg, start, start.plan
        self.rank, self.device, self.root = dist.get_rank(), training_device(), cfg.checkpoint_dir
        if not parallel.is_initialized():
            parallel.initialize(cfg.train.tensor_parallel_size)
        self.model = build_model(start.model_config, cfg.train.seed)
        if start.resume_tag is None and cfg.checkpoint.init_from is not None:
            self._load_initial_weights(cfg.checkpoint.init_from)
        self.engine = build_engine(cfg, self.model, start.ds_config)
        self.step, self.consumed, self.tokenizer = 0, 0, start.tokenizer
        self.result = TrainResult(0, 0, last_checkpoint=self.root / start.resume_tag if start.resume_tag else None)
        if start.resume_tag is not None:
            self._resume()
        if self.rank == 0:
            self._record_start()
        self.train_data, self.valid_data = self._datasets()
        self.loader = build_data_loader(
            self.train_data,
            micro_batch_size=self.plan.micro_batch_size,
            global_batch_size=self.plan.global_batch_size,
            data_parallel_rank=parallel.get_data_parallel_rank(),
            data_parallel_size=self.plan.data_parallel_size,
            consumed_samples=self.consumed,
            num_workers=cfg.data.num_workers,
            device=self.device,
        )
        self.metrics = MetricsLogger(
            cfg.run_dir,
            total_steps=cfg.train.steps,
            tokens_per_step=self.plan.global_batch_size * cfg.data.seq_len,
            flops_per_token=model_flops_per_token(
                start.model_config, full_parameter_count(self.model), cfg.data.seq_len
            ),
            world_size=dist.get_world_size(),
            peak_tflops=peak_tflops(cfg.train.peak_tflops),
            tensorboard=cfg.logging.tensorboard,
            on_gpu=on_gpu(),
            dp_group=parallel.get_data_parallel_group(),
            resume_step=self.step,
        )
        self.guards = Guards(cfg.train)
        self.batches = iter(self.loader)

    # --- the recipe ---------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train to ``train.steps``, validating, logging and saving on their intervals."""
        try:
            while self.step < self.cfg.train.steps:
                skipped, scale = self.train_step()
                self.maybe_validate()
                stuck = self.guards.after_step(self.step, skipped, scale)
                self.maybe_save(stuck)
            self.flush_and_check()
        finally:
            self.loader.close()
            self.metrics.close(plot=self.cfg.logging.plot)
        self.result.final_step, self.result.consumed_samples = self.step, self.consumed
        return self.result

    def train_step(self) -> tuple[bool, float]:
        """One optimizer step over ``gradient_accumulation_steps`` micro batches; returns (skipped, the loss
        scale it ran with)."""
        lr = learning_rate(self.step, self.cfg.optim, self.cfg.train.steps)
        set_learning_rate(self.engine, lr)
        skipped_before, scale = self.engine.skipped_steps, loss_scale(self.engine)
        step_loss = torch.zeros((), device=self.device)
        for _ in range(self.plan.gradient_accumulation_steps):
            loss = self.forward(next(self.batches))
            self.engine.backward(loss)
            self.engine.step()  # DeepSpeed only updates at the accumulation boundary
            step_loss += loss.detach().float()
        self.step += 1
        self.consumed += self.plan.global_batch_size
        skipped = self.engine.skipped_steps > skipped_before
        self.metrics.record(
            self.step,
            loss=step_loss / self.plan.gradient_accumulation_steps,
            lr=lr,
            grad_norm=self.engine.get_global_grad_norm(),
            loss_scale=loss_scale(self.engine),
            skipped=skipped,
            consumed_samples=self.consumed,
        )
        return skipped, scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The mean next-token loss of one micro batch of ``[micro, seq_len + 1]`` tokens."""
        return self.engine(tokens[:, :-1], labels=tokens[:, 1:])

    def maybe_validate(self) -> None:
        if self.valid_data is not None and self.cfg.eval.interval > 0 and self.step % self.cfg.eval.interval == 0:
            self.metrics.add_validation(self.step, self.validation_loss())

    def maybe_save(self, stuck: str | None = None) -> None:
        """Save on the checkpoint interval and at the end; stop (after saving) when a guard says ``stuck``."""
        is_save = self.step % self.cfg.checkpoint.interval == 0 or self.step == self.cfg.train.steps
        if stuck or is_save or self.step % self.cfg.logging.interval == 0:
            self.flush_and_check()  # before saving: only checkpoints of finite losses are written
        if stuck or is_save:
            self.save()  # skipped steps left weights and optimizer untouched: still a good state
        if stuck:
            raise TrainingStopped(f"{stuck}; last good checkpoint: {self.result.last_checkpoint}")

    # --- the pieces -----------------------------------------------------------------------------------

    def flush_and_check(self) -> None:
        records = self.metrics.flush()
        self.result.losses += [r["loss"] for r in records]
        problem = self.guards.check_losses(records)
        if problem:
            raise TrainingStopped(f"{problem}; last good checkpoint: {self.result.last_checkpoint or 'none'}")

    def save(self) -> None:
        client_state = {"step": self.step, "consumed_samples": self.consumed, "config": config_to_dict(self.cfg)}
        self.result.last_checkpoint = ckpt.save_checkpoint(
            self.engine,
            self.root,
            self.step,
            client_state,
            self.start.model_config,
            self.tokenizer,
            self.cfg.checkpoint.keep_last,
        )
        if self.tokenizer is not None:  # copy from the newest checkpoint next time: older ones may be pruned
            self.tokenizer = str(self.result.last_checkpoint / ckpt.TOKENIZER_DIR)

    def validation_loss(self) -> float:
        """Mean loss over the first ``eval.batches`` micro-batches per rank: the same samples every time."""
        plan = self.plan
        assert self.valid_data is not None, "maybe_validate asks only when there is a validation split"
        loader = build_data_loader(
            self.valid_data,
            micro_batch_size=plan.micro_batch_size,
            global_batch_size=plan.micro_batch_size * plan.data_parallel_size,
            data_parallel_rank=parallel.get_data_parallel_rank(),
            data_parallel_size=plan.data_parallel_size,
            device=self.device,
        )
        total, batches = torch.zeros((), device=self.device), 0
        self.engine.eval()
        try:
            with torch.no_grad():
                for tokens in loader:
                    total += self.engine(tokens[:, :-1], labels=tokens[:, 1:]).float()
                    batches += 1
                    if batches == self.cfg.eval.batches:
                        break
        finally:
            loader.close()
            self.engine.train()
        if batches == 0:
            raise ConfigError("data.split: the validation split is smaller than one micro batch per rank")
        total /= batches
        dist.all_reduce(total, group=parallel.get_data_parallel_group())
        return total.item() / plan.data_parallel_size

    def _load_initial_weights(self, source: str) -> None:
        """``checkpoint.init_from``'s weights, resharded to this run's tensor-parallel size."""
        try:
            base_config, shards, _ = load_model_checkpoint(source)
        except CheckpointError as e:
            raise ConfigError(f"checkpoint.init_from: {e}") from None
        shards = reshard(shards, base_config, parallel.get_tensor_parallel_world_size())
        self.model.load_state_dict(shards[parallel.get_tensor_parallel_rank()], strict=True)

    def _resume(self) -> None:
        client = ckpt.load_checkpoint(self.engine, self.root)
        if client is None:  # the start-up checks found one: it was removed since
            raise CheckpointError(f"{self.root}: the checkpoint {self.start.resume_tag} to resume from is gone")
        apply_loss_scale_policy(self.engine, self.cfg.train)  # the checkpoint's scaler brings the saving run's policy
        self.step, self.consumed = client["step"], client["consumed_samples"]
        change = schedule_change(self.step, client["config"], self.cfg.optim, self.cfg.train.steps)
        if change and self.rank == 0:
            print(change, flush=True)

    def _record_start(self) -> None:
        Path(self.cfg.run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            Path(self.cfg.run_dir) / "config.yaml", yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
        )
        plan = self.plan
        print(
            f"megaphi.train: {full_parameter_count(self.model) / 1e6:.2f}M parameters, world "
            f"{dist.get_world_size()} = TP {parallel.get_tensor_parallel_world_size()} x DP "
            f"{plan.data_parallel_size}, global batch {plan.global_batch_size} = micro {plan.micro_batch_size} x "
            f"accumulation {plan.gradient_accumulation_steps} x DP {plan.data_parallel_size}, "
            f"{self.cfg.train.precision}, "
            + (
                f"resuming at step {self.step} ({self.consumed} samples)"
                if self.start.resume_tag
                else "starting at step 0"
            ),
            flush=True,
        )

    def _datasets(self) -> tuple[GPTDataset | BlendedDataset, GPTDataset | BlendedDataset | None]:
        cfg, plan = self.cfg, self.plan
        try:
            return build_train_valid_datasets(
                self.start.data_paths,
                seq_len=cfg.data.seq_len,
                seed=cfg.train.seed,
                split=cfg.data.split,
                cache_dir=cfg.data.cache_dir,
                train_samples=cfg.train.steps * plan.global_batch_size,
                # no validation asked for: no validation split needed
                valid_samples=(
                    cfg.eval.batches * plan.micro_batch_size * plan.data_parallel_size if cfg.eval.interval > 0 else 0
                ),
            )
        except DatasetConfigError as e:
            raise ConfigError(f"data: {e}") from None
        except IndexedDatasetError as e:  # a dataset that changed on disk after the preflight read it
            raise ConfigError(f"data.paths: {e}") from None


def train(
    cfg: TrainConfig, launch: LaunchEnv, resume: bool = False, trainer_class: type[Trainer] = Trainer
) -> TrainResult:
    """Run (or continue, with ``resume``) the training described by ``cfg``; collective over the job."""
    init_distributed(launch)
    start, locks = preflight(cfg, launch.world_size, resume)
    try:
        if launch.rank == 0 and (warning := unchecked_version_warning()):
            print(warning, flush=True)
        return trainer_class(cfg, start).fit()
    finally:
        for lock in locks:
            lock.release()
