"""Per-step metrics: ``metrics.jsonl``, TensorBoard scalars, a console line, and a loss-curve PNG.

Step values stay on the device until a log interval: ``flush`` does one host synchronisation (and
one data-parallel all-reduce of the losses) for the whole interval, then writes one JSON line per
optimizer step. Only global rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megaphi.common.jsonl import iter_jsonl, read_jsonl
from megaphi.common.files import atomic_open, atomic_write_text

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"


class MetricsLogger:
    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int,
        tokens_per_step: int,
        flops_per_token: float,
        world_size: int,
        peak_tflops: float | None,
        tensorboard: bool,
        on_gpu: bool = False,
        dp_group: dist.ProcessGroup | None = None,
        resume_step: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.peak_tflops = peak_tflops
        self.on_gpu = on_gpu  # TFLOP/s and MFU are reported for GPUs only
        self.dp_group = dp_group
        self.is_writer = not dist.is_initialized() or dist.get_rank() == 0
        self._pending: list[dict[str, Any]] = []
        self._interval_start = time.perf_counter()
        self._tb = None
        if self.is_writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        """Keep the records up to ``step``: a killed run may have logged steps past its last checkpoint."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        # on_error="skip": the torn last line of a killed writer is dropped (and logged)
        kept = [record for record in iter_jsonl(path, on_error="skip") if record.get("step", math.inf) <= step]
        atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))

    def record(
        self,
        step: int,
        *,
        loss: torch.Tensor,
        lr: float,
        grad_norm: Any,
        loss_scale: float,
        skipped: bool,
        consumed_samples: int,
    ) -> None:
        """Queue one optimizer step; ``loss`` (this rank's mean) and ``grad_norm`` may be device tensors."""
        self._pending.append(
            dict(
                step=step,
                loss=loss.detach(),
                lr=lr,
                grad_norm=grad_norm,
                loss_scale=loss_scale,
                skipped=bool(skipped),
                consumed_samples=consumed_samples,
            )
        )

    def add_validation(self, step: int, loss: float) -> None:
        """Attach a validation loss to the queued record of ``step``."""
        for rec in self._pending:
            if rec["step"] == step:
                rec["val_loss"] = loss
                return
        raise RuntimeError(f"validation at step {step} after its record was flushed")

    def flush(self) -> list[dict[str, Any]]:
        """Synchronise, reduce, write; returns the records (every rank gets the same losses)."""
        if not self._pending:
            return []
        summed = torch.stack([rec["loss"].float() for rec in self._pending])
        if self.dp_group is not None and dist.get_world_size(self.dp_group) > 1:
            dist.all_reduce(summed, group=self.dp_group)
            summed /= dist.get_world_size(self.dp_group)
        losses = summed.tolist()  # the host synchronisation
        now = time.perf_counter()
        tokens_per_s = len(self._pending) * self.tokens_per_step / max(now - self._interval_start, 1e-9)
        self._interval_start = now
        records = []
        for rec, loss in zip(self._pending, losses):
            g = rec["grad_norm"]
            grad_norm = None if g is None else float(g)
            out = dict(
                rec,
                loss=loss,
                grad_norm=grad_norm if grad_norm is None or math.isfinite(grad_norm) else None,
                tokens_per_s=tokens_per_s,
            )
            if self.on_gpu:
                out["tflops"] = tokens_per_s * self.flops_per_token / self.world_size / 1e12
                if self.peak_tflops:
                    out["mfu"] = out["tflops"] / self.peak_tflops
            records.append(out)
        self._pending = []
        if self.is_writer:
            self._write(records)
        return records

    def _write(self, records: list[dict[str, Any]]) -> None:
        with open(self.run_dir / METRICS_FILE, "a") as f:
            for rec in records:
                f.write(json.dumps(rec, allow_nan=True) + "\n")
        if self._tb is not None:
            for rec in records:
                for key in ("loss", "lr", "grad_norm", "loss_scale", "tokens_per_s", "tflops", "mfu", "val_loss"):
                    if rec.get(key) is not None:
                        self._tb.add_scalar(f"train/{key}", rec[key], rec["step"])
                self._tb.add_scalar("train/skipped", int(rec["skipped"]), rec["step"])
            self._tb.flush()
        print(console_line(records, self.total_steps), flush=True)

    def close(self, plot: bool) -> None:
        if not self.is_writer:
            return
        if self._tb is not None:
            self._tb.close()
        if plot and (self.run_dir / METRICS_FILE).exists():
            plot_loss_curve(self.run_dir / METRICS_FILE, self.run_dir / PLOT_FILE)


def console_line(records: list[dict[str, Any]], total_steps: int) -> str:
    last = records[-1]
    mean_loss = sum(r["loss"] for r in records) / len(records)
    skipped = sum(r["skipped"] for r in records)
    parts = [
        f"step {last['step']:>6}/{total_steps}",
        f"loss {mean_loss:.4f}",
        f"lr {last['lr']:.3e}",
        f"grad norm {last['grad_norm']:.3f}" if last["grad_norm"] is not None else "grad norm -",
        f"loss scale {last['loss_scale']:g}",
        f"skipped {skipped}",
        f"{last['tokens_per_s']:,.0f} tok/s",
        f"samples {last['consumed_samples']}",
    ]
    if "tflops" in last:
        parts.append(f"{last['tflops']:.1f} TFLOP/s/device")
    if "mfu" in last:
        parts.append(f"MFU {100 * last['mfu']:.1f}%")
    if "val_loss" in last:
        parts.append(f"val loss {last['val_loss']:.4f}")
    return " | ".join(parts)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(path)


def plot_loss_curve(metrics_path: Path, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps = [r["step"] for r in records if not r["skipped"]]
    ax.plot(steps, [r["loss"] for r in records if not r["skipped"]], label="train loss", linewidth=1)
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(out_path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
