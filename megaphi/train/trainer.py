"""The training loop: data -> DeepSpeed engine -> metrics, validation, checkpoints, divergence guards.

Steps are numbered from 1: "step 5" is the fifth optimizer step, and a checkpoint tagged ``step5``
holds the state after it. Resuming continues at the step after the checkpoint, with the data
sampler positioned at the checkpoint's consumed-sample count and every RNG stream restored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from megaphi import parallel
from megaphi.config import ConfigError, TrainConfig, config_to_dict, plan_batches
from megaphi.convert.checkpoint import load_checkpoint_config, load_model_checkpoint
from megaphi.convert.layout import CheckpointError, reshard
from megaphi.data.builder import build_train_valid_datasets
from megaphi.data.gpt_dataset import DatasetConfigError
from megaphi.data.indexed import IndexedDatasetError
from megaphi.data.loader import build_data_loader
from megaphi.model import PhiConfig
from megaphi.train import checkpoint as ckpt
from megaphi.train.engine import (apply_loss_scale_policy, build_engine, build_model, deepspeed_config,
                                  full_parameter_count, init_distributed, loss_scale, model_flops_per_token, on_gpu,
                                  peak_tflops, resolve_model_config, set_learning_rate, training_device)
from megaphi.train.metrics import MetricsLogger
from megaphi.train.schedule import learning_rate


class TrainingStopped(RuntimeError):
    """Training cannot usefully continue (diverged, or fp16 loss scale stuck); the message says why."""


@dataclass
class TrainResult:
    final_step: int
    consumed_samples: int
    losses: list[float] = field(default_factory=list)  # per step run in this process
    last_checkpoint: Path | None = None


def validate_config(cfg: TrainConfig, world_size: int, resume: bool) -> None:
    """Every check that needs no process group, so a bad config fails before anything starts."""
    cfg.data.check_paths_exist()
    latest = ckpt.read_latest(cfg.checkpoint_dir) if cfg.checkpoint_dir.is_dir() else None
    if latest is not None and not resume:
        raise ConfigError(f"checkpoint.dir: {cfg.checkpoint_dir} already holds checkpoints (latest: {latest}); pass "
                          "--resume auto to continue that run, or choose another run_dir")
    if cfg.checkpoint.init_from is not None and not Path(cfg.checkpoint.init_from).is_dir():
        raise ConfigError(f"checkpoint.init_from: {cfg.checkpoint.init_from!r} is not a directory; give a megaphi "
                          "checkpoint (a tag directory, or a checkpoint root with a 'latest' file)")
    tp = cfg.train.tensor_parallel_size
    if world_size % tp:
        raise ConfigError(f"train.tensor_parallel_size: {tp} does not divide the {world_size} processes of this "
                          "job; launch a multiple of it or change it")
    deepspeed_config(cfg, plan_batches(cfg.train, world_size // tp))
    if cfg.train.precision != "fp32":
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        supported = {"fp16": accelerator.is_fp16_supported, "bf16": accelerator.is_bf16_supported}
        if not supported[cfg.train.precision]():
            raise ConfigError(f"train.precision: DeepSpeed does not support {cfg.train.precision} on this "
                              f"{accelerator.device_name()} device; use " + ("bf16 or fp32" if cfg.train.precision
                                                                           == "fp16" else "fp16 or fp32"))


class _Guards:
    """fp16: count overflow skips and stop when the scale sits at its minimum; bf16/fp32: stop on NaN/inf."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.precision = cfg.train.precision
        self.min_scale = cfg.train.min_loss_scale
        self.patience = cfg.train.max_steps_at_min_loss_scale
        self.skips_at_min = 0

    def after_step(self, step: int, skipped: bool, loss_scale: float) -> str | None:
        """``loss_scale`` is the scale the step ran with: an overflow at a higher scale still had room to lower it."""
        if self.precision != "fp16":
            return None
        self.skips_at_min = self.skips_at_min + 1 if skipped and loss_scale <= self.min_scale else 0
        if self.skips_at_min >= self.patience:
            return (f"fp16 loss scale stuck at its minimum {self.min_scale:g} with overflowing gradients for "
                    f"{self.skips_at_min} steps (step {step}); the run diverged: lower optim.lr or use "
                    "train.precision=bf16")
        return None

    def check_losses(self, records: list[dict[str, Any]]) -> str | None:
        if self.precision == "fp16":
            return None  # a non-finite fp16 loss is an overflow: skipped and handled by after_step
        for rec in records:
            if not math.isfinite(rec["loss"]):
                return (f"loss is {rec['loss']} at step {rec['step']} in {self.precision}; the run diverged: "
                        "lower optim.lr or raise optim.warmup_steps")
        return None


def _inject_faults(cfg: TrainConfig, step: int, model: torch.nn.Module, loss: torch.Tensor):
    """Debug fault injection (debug.*): a NaN loss, or an inf gradient on the first parameter."""
    handle = None
    if step in cfg.debug.nan_loss_steps:
        loss = loss * float("nan")
    if step in cfg.debug.inf_grad_steps:
        first = next(p for p in model.parameters() if p.requires_grad)
        handle = first.register_hook(lambda g: torch.full_like(g, float("inf")))
    return loss, handle


def _evaluate(engine, valid, cfg: TrainConfig, plan, device) -> float:
    """Mean loss over the first ``eval.batches`` micro-batches per rank: the same samples every time."""
    loader = build_data_loader(valid, micro_batch_size=plan.micro_batch_size,
                               global_batch_size=plan.micro_batch_size * plan.data_parallel_size,
                               data_parallel_rank=parallel.get_data_parallel_rank(),
                               data_parallel_size=plan.data_parallel_size, device=device)
    total = torch.zeros((), device=device)
    batches = 0
    engine.eval()
    try:
        with torch.no_grad():
            for tokens in loader:
                total += engine(tokens[:, :-1], labels=tokens[:, 1:]).float()
                batches += 1
                if batches == cfg.eval.batches:
                    break
    finally:
        loader.close()
        engine.train()
    if batches == 0:
        raise ConfigError("data.split: the validation split is smaller than one micro batch per rank")
    total /= batches
    dist.all_reduce(total, group=parallel.get_data_parallel_group())
    return total.item() / plan.data_parallel_size


# What a resumed run may change about its model: nothing that shapes a parameter.
_RESUMABLE_MODEL_CHANGES = {"resid_pdrop", "embd_pdrop", "attention_dropout", "attn_backend", "activation_checkpointing",
                            "cross_entropy", "layer_norm_backend"}


def _starting_point(cfg: TrainConfig, root: Path, latest: str | None):
    """The architecture to build, initial weights (this rank's shard set) when finetuning, and the
    tokenizer that the checkpoint carries.

    Resuming: the run's own checkpoint says what the model is (weights come with the engine state).
    ``checkpoint.init_from``: that checkpoint's config and weights, resharded to this run's TP size.
    Otherwise: ``model.preset`` and freshly seeded weights. ``model.overrides`` apply in every case.
    """
    if latest is not None:
        try:
            config, meta = load_checkpoint_config(root)
        except CheckpointError as e:
            raise ConfigError(f"checkpoint.dir: cannot resume: {e}") from None
        return config, None, meta["tokenizer_path"]
    if cfg.checkpoint.init_from is None:
        return None, None, None
    try:
        base_config, shards, meta = load_model_checkpoint(cfg.checkpoint.init_from)
    except CheckpointError as e:
        raise ConfigError(f"checkpoint.init_from: {e}") from None
    return base_config, reshard(shards, base_config, parallel.get_tensor_parallel_world_size()), meta["tokenizer_path"]


def _check_resumable(model_config: PhiConfig, saved: PhiConfig) -> None:
    ours, theirs = model_config.to_dict(), saved.to_dict()
    for field, value in ours.items():
        if field not in _RESUMABLE_MODEL_CHANGES and value != theirs.get(field):
            raise ConfigError(f"model.overrides.{field}: {value!r} differs from the checkpoint being resumed "
                              f"({theirs.get(field)!r}); a resumed run keeps its architecture (start a new run_dir, "
                              "with checkpoint.init_from to start from these weights)")


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or continue, with ``resume``) the training described by ``cfg``; collective over the job."""
    from megaphi.train.launch_env import discover

    validate_config(cfg, discover().world_size, resume)
    init_distributed()
    if not parallel.is_initialized():
        parallel.initialize(cfg.train.tensor_parallel_size)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    plan = plan_batches(cfg.train, parallel.get_data_parallel_world_size())
    device = training_device()
    root = cfg.checkpoint_dir

    latest = ckpt.read_latest(root) if root.is_dir() else None

    base_config, init_shards, checkpoint_tokenizer = _starting_point(cfg, root, latest)
    model_config = resolve_model_config(cfg, base_config)
    if latest is not None:
        _check_resumable(model_config, base_config)
    # a finetuned or resumed model keeps the tokenizer it was trained with, unless data.tokenizer names one
    tokenizer = cfg.data.tokenizer or checkpoint_tokenizer
    cfg.data.check_token_ids(model_config.vocab_size)
    if cfg.data.seq_len > model_config.max_position_embeddings:
        raise ConfigError(f"data.seq_len: {cfg.data.seq_len} exceeds the model's max_position_embeddings "
                          f"{model_config.max_position_embeddings}")
    model = build_model(model_config, cfg.train.seed)
    if init_shards is not None:
        model.load_state_dict(init_shards[parallel.get_tensor_parallel_rank()], strict=True)
        del init_shards
    engine = build_engine(cfg, model, plan)

    client = ckpt.load_checkpoint(engine, root) if resume else None
    if client:
        apply_loss_scale_policy(engine, cfg)  # the checkpoint's scaler brings the saving run's policy
    step = client["step"] if client else 0
    consumed = client["consumed_samples"] if client else 0
    if rank == 0:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        print(f"megaphi.train: {full_parameter_count(model) / 1e6:.2f}M parameters, world {world_size} = "
              f"TP {parallel.get_tensor_parallel_world_size()} x DP {plan.data_parallel_size}, global batch "
              f"{plan.global_batch_size} = micro {plan.micro_batch_size} x accumulation "
              f"{plan.gradient_accumulation_steps} x DP {plan.data_parallel_size}, {cfg.train.precision}, "
              + (f"resuming at step {step} ({consumed} samples)" if client else "starting at step 0"), flush=True)

    try:
        train_ds, valid_ds = build_train_valid_datasets(
            cfg.data.paths, seq_len=cfg.data.seq_len, seed=cfg.train.seed, split=cfg.data.split,
            cache_dir=cfg.data.cache_dir, train_samples=cfg.train.steps * plan.global_batch_size,
            # no validation asked for: no validation split needed
            valid_samples=(cfg.eval.batches * plan.micro_batch_size * plan.data_parallel_size
                           if cfg.eval.interval > 0 else 0))
    except DatasetConfigError as e:
        raise ConfigError(f"data: {e}") from None
    except IndexedDatasetError as e:  # a dataset that changed on disk after validate_config read it
        raise ConfigError(f"data.paths: {e}") from None
    eval_on = cfg.eval.interval > 0 and valid_ds is not None
    loader = build_data_loader(train_ds, micro_batch_size=plan.micro_batch_size,
                               global_batch_size=plan.global_batch_size,
                               data_parallel_rank=parallel.get_data_parallel_rank(),
                               data_parallel_size=plan.data_parallel_size, consumed_samples=consumed,
                               num_workers=cfg.data.num_workers, device=device)
    tokens_per_step = plan.global_batch_size * cfg.data.seq_len
    metrics = MetricsLogger(
        cfg.run_dir, total_steps=cfg.train.steps, tokens_per_step=tokens_per_step,
        flops_per_token=model_flops_per_token(model_config, full_parameter_count(model), cfg.data.seq_len),
        world_size=world_size, peak_tflops=peak_tflops(cfg.train.peak_tflops), tensorboard=cfg.logging.tensorboard,
        on_gpu=on_gpu(), dp_group=parallel.get_data_parallel_group(), resume_step=step)
    guards = _Guards(cfg)
    result = TrainResult(step, consumed, last_checkpoint=root / latest if latest else None)

    def save() -> None:
        nonlocal tokenizer
        client_state = {"step": step, "consumed_samples": consumed, "config": config_to_dict(cfg)}
        result.last_checkpoint = ckpt.save_checkpoint(engine, root, step, client_state, model_config,
                                                      tokenizer, cfg.checkpoint.keep_last)
        if tokenizer is not None:  # copy from the newest checkpoint next time: older ones may be pruned
            tokenizer = str(result.last_checkpoint / ckpt.TOKENIZER_DIR)

    def flush_and_check() -> None:
        records = metrics.flush()
        result.losses += [r["loss"] for r in records]
        problem = guards.check_losses(records)
        if problem:
            raise TrainingStopped(f"{problem}; last good checkpoint: {result.last_checkpoint or 'none'}")

    batches = iter(loader)
    try:
        while step < cfg.train.steps:
            lr = learning_rate(step, cfg.optim, cfg.train.steps)
            set_learning_rate(engine, lr)
            skipped_before, scale_before = engine.skipped_steps, loss_scale(engine)
            step_loss = torch.zeros((), device=device)
            for _ in range(plan.gradient_accumulation_steps):
                tokens = next(batches)
                loss = engine(tokens[:, :-1], labels=tokens[:, 1:])
                loss, hook = _inject_faults(cfg, step + 1, model, loss)
                engine.backward(loss)
                if hook is not None:
                    hook.remove()
                engine.step()  # DeepSpeed only updates at the accumulation boundary
                step_loss += loss.detach().float()
            step += 1
            consumed += plan.global_batch_size
            skipped = engine.skipped_steps > skipped_before
            metrics.record(step, loss=step_loss / plan.gradient_accumulation_steps, lr=lr,
                           grad_norm=engine.get_global_grad_norm(), loss_scale=loss_scale(engine), skipped=skipped,
                           consumed_samples=consumed)
            if eval_on and step % cfg.eval.interval == 0:
                metrics.add_validation(step, _evaluate(engine, valid_ds, cfg, plan, device))
            stuck = guards.after_step(step, skipped, scale_before)
            is_save = step % cfg.checkpoint.interval == 0 or step == cfg.train.steps
            if stuck or is_save or step % cfg.logging.interval == 0:
                flush_and_check()  # before saving: only checkpoints of finite losses are written
            if stuck:
                save()  # skipped steps left weights and optimizer untouched: still a good state
                raise TrainingStopped(f"{stuck}; last good checkpoint: {result.last_checkpoint}")
            if is_save:
                save()
        flush_and_check()
    finally:
        loader.close()
        metrics.close(plot=cfg.logging.plot)
    result.final_step, result.consumed_samples = step, consumed
    return result
