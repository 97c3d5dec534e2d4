"""The ``megaphi-trainer`` implementation of benchmarks/train_throughput.py: ``python -m megaphi.train``
itself, its loop and its loader over a real .bin/.idx of random tokens, timed from the metrics the
trainer logs (and from when it wrote them) after the warm-up steps.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from train_implementations import LEARNING_RATE, REPO, Settings, megaphi_overrides, model_config, train_section


def write_random_corpus(prefix: Path, vocab_size: int, num_tokens: int, seed: int) -> None:
    """A real .bin/.idx pair of uniformly random token ids, documents of 8192 tokens, by megaphi's writer."""
    import numpy as np

    from megaphi.data import IndexedDatasetWriter

    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(str(prefix), np.uint16 if vocab_size <= 2**16 else np.int32) as writer:
        for _ in range(max(1, math.ceil(num_tokens / 8192))):
            writer.add_document(rng.integers(0, vocab_size, 8192))


def gpu_memory_used_gib() -> float | None:
    """Device memory in use (every process, allocator caches included), from nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return round(float(out.split()[0]) / 1024, 2)
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def logged_records(metrics_path: Path) -> list[dict[str, Any]]:
    """The trainer's metrics.jsonl so far (a line it is still writing is left out)."""
    records = []
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def measure_trainer_loop(s: Settings) -> dict[str, Any]:
    """``python -m megaphi.train`` on a fresh random corpus; throughput from the trainer's own metrics.

    The trainer logs every ``warmup`` steps (its one host synchronisation per log interval); the
    first interval is the warm-up and is left out. The process is stopped once the last step is
    logged, before its final checkpoint, which would only cost time here.
    """
    import torch
    import yaml

    from megaphi.model import PhiForCausalLM
    from megaphi.train.engine import model_flops_per_token, peak_tflops_of

    config = model_config(s)
    interval = max(1, s.warmup)
    timed_steps = math.ceil(s.steps / interval) * interval
    total_steps = (interval if s.warmup else 0) + timed_steps
    work = Path(tempfile.mkdtemp(prefix="megaphi-trainer-bench-"))
    tokens_needed = int(total_steps * s.tokens_per_step * 1.2) + 2 * (s.seq_len + 1) * s.micro_batch
    write_random_corpus(work / "random_text_document", config.vocab_size, tokens_needed, s.seed)
    recipe = {
        "run_dir": str(work / "run"),
        "model": {"preset": s.preset, "overrides": megaphi_overrides(s)},
        "data": {
            "paths": [str(work / "random_text_document")],
            "split": "100,0,0",
            "seq_len": s.seq_len,
            "num_workers": 2 if s.device.startswith("cuda") else 0,
        },
        "optim": {"lr": LEARNING_RATE, "weight_decay": 0.1, "grad_clip": 1.0, "warmup_steps": 0},
        "train": {"steps": total_steps, **train_section(s)},
        "checkpoint": {"interval": 10**9, "keep_last": 1},
        "logging": {"interval": interval, "tensorboard": False, "plot": False},
        "eval": {"interval": 0},
    }
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    metrics_path = work / "run" / "metrics.jsonl"
    start = time.perf_counter()
    with open(work / "trainer.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "megaphi.train", "--config", str(work / "recipe.yaml")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        peak_gib, first_record_s, polls = None, None, 0
        flushed_at: dict[int, float] = {}  # records logged -> when metrics.jsonl was written (the OS's clock)
        try:
            while proc.poll() is None:
                time.sleep(0.1)
                polls += 1
                if s.device.startswith("cuda") and polls % 20 == 0:
                    used = gpu_memory_used_gib()
                    peak_gib = used if peak_gib is None or (used or 0) > peak_gib else peak_gib
                records = logged_records(metrics_path)
                if records and len(records) not in flushed_at:
                    flushed_at[len(records)] = metrics_path.stat().st_mtime
                if records and first_record_s is None:
                    first_record_s = time.perf_counter() - start
                if records and records[-1]["step"] >= total_steps:
                    break  # the last step is logged: skip the final checkpoint
        finally:  # also when this process is interrupted: never leave a trainer holding the device
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
    output = (work / "trainer.log").read_text()
    records = logged_records(metrics_path)
    if not records or records[-1]["step"] < total_steps:
        last = [line for line in output.splitlines() if line.strip()][-3:]
        if "OutOfMemoryError" in output or "out of memory" in output:
            raise RuntimeError(f"OutOfMemoryError in the trainer: {' / '.join(last)[:300]}")
        raise RuntimeError(f"the trainer exited with status {proc.returncode}: {' / '.join(last)[:300]}")
    timed = [r for r in records if r["step"] > total_steps - timed_steps]
    # Our own clock: the file times of the flush that ended the warm-up and of the last one (each flush is
    # seen, since the trainer spends at least a step between flushes and this loop polls every 0.1 s).
    warm = total_steps - timed_steps
    if warm and warm in flushed_at and total_steps in flushed_at:
        seconds = flushed_at[total_steps] - flushed_at[warm]
    else:  # no warm-up flush to start from: the trainer's own interval times
        seconds = sum(interval * s.tokens_per_step / r["tokens_per_s"] for r in timed[interval - 1 :: interval])
    tokens_per_s = timed_steps * s.tokens_per_step / seconds
    # the trainer's own figure: each record's interval tokens/s, averaged over the time it covers
    logged_tokens_per_s = timed_steps / sum(1 / r["tokens_per_s"] for r in timed)
    with torch.device("meta"):
        num_params = sum(p.numel() for p in PhiForCausalLM(config).parameters())
    flops_per_token = model_flops_per_token(config, num_params, s.seq_len)
    on_cuda = s.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    peak = peak_tflops_of(device_name) if on_cuda else None
    tflops = tokens_per_s * flops_per_token / 1e12
    logged_mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    kernels = next((line.split("kernels: ", 1)[1] for line in output.splitlines() if "kernels: " in line), None)
    return dict(
        asdict(s),
        device_name=device_name,
        torch=torch.__version__,
        params=num_params,
        flops_per_token=flops_per_token,
        tokens_per_step=s.tokens_per_step,
        setup_s=round(first_record_s or 0, 2),
        warmup_s=0.0,
        step_s=round(seconds / timed_steps, 4),
        tokens_per_s=round(tokens_per_s, 1),
        model_tflops=round(tflops, 3),
        peak_tflops=peak,
        mfu=round(tflops / peak, 4) if peak else None,
        trainer_logged_mfu=round(sum(logged_mfu) / len(logged_mfu), 4) if logged_mfu else None,
        trainer_logged_tokens_per_s=round(logged_tokens_per_s, 1),
        loss=records[-1]["loss"],
        skipped_steps=sum(bool(r["skipped"]) for r in timed),
        kernels=kernels,
        **({"peak_memory_gib": peak_gib} if on_cuda else {}),
    )
