"""End-to-end training runs of the real trainer (DeepSpeed ZeRO-2 on CPU/gloo), launched as users do.

All runs share one recipe: phi-tiny, 8 optimizer steps of 8 sequences of 64 tokens, fp32, checkpoints
every 2 steps. Losses of differently-parallel runs agree to 2e-5 (about 3e-6 relative): they do the
same arithmetic with fp32 sums in a different order (two data-parallel halves averaged by an
all-reduce instead of four accumulated micro-batches; tensor-parallel partial matmuls summed by an
all-reduce), which moves the last one or two bits of each step; one different sample, or a gradient
scaled wrongly, moves the loss by more than 1e-3 here.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch

from megaphi.train.config import OptimSection
from megaphi.train.metrics import read_metrics
from megaphi.train.schedule import learning_rate
from tests.megaphi.train.conftest import REPO, run_trainer, trainer_command, trainer_env

pytestmark = pytest.mark.slow

STEPS = 8
DROPOUT = ["model.overrides.resid_pdrop=0.1", "model.overrides.embd_pdrop=0.1", "model.overrides.attention_dropout=0.1"]
TOLERANCE = 2e-5
FAULTS = "tests.megaphi.train.faults"  # the trainer with faults injected on demand (and fp16 on CPU)


def recipe(tmp_path, corpus) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""
model: {{preset: phi-tiny}}
data: {{paths: [{corpus}], split: "90,10,0", seq_len: 64}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 2, decay: linear, weight_decay: 0.1, grad_clip: 1.0}}
train: {{steps: {STEPS}, global_batch_size: 8, micro_batch_size: 2, precision: fp32,
        deepspeed_config: {REPO / "ds_configs" / "cpu.json"}}}
checkpoint: {{interval: 2, keep_last: 3}}
logging: {{interval: 1}}
eval: {{interval: 4, batches: 2}}
""")
    return str(path)


def train(tmp_path, corpus, run_dir, *overrides, nproc=1, expect_rc=0, module="megaphi.train"):
    result = run_trainer(
        ["--config", recipe(tmp_path, corpus), f"run_dir={run_dir}", *overrides], nproc=nproc, module=module
    )
    assert result.returncode == expect_rc, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus):
    """One process, TP=1 x DP=1: the run every parallel layout must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    train(tmp, tiny_corpus, tmp / "run")
    return tmp / "run"


def test_one_process_run_logs_every_step_and_keeps_the_last_checkpoints(reference):
    records = read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert {"step", "loss", "lr", "grad_norm", "loss_scale", "skipped", "tokens_per_s", "consumed_samples"} <= set(
            r
        )
        assert r["consumed_samples"] == 8 * r["step"] and r["skipped"] is False and r["loss_scale"] == 1.0
        assert r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    optim = OptimSection(lr=3e-3, min_lr=3e-4, warmup_steps=2, decay="linear")
    assert [r["lr"] for r in records] == pytest.approx([learning_rate(s, optim, STEPS) for s in range(STEPS)])
    assert records[-1]["loss"] < records[0]["loss"] - 0.3  # it learns the progressions
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8]
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))
    assert (reference / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    root = reference / "checkpoints"
    assert (root / "latest").read_text() == "step8"
    assert sorted(p.name for p in root.glob("step*")) == ["step4", "step6", "step8"]  # keep_last 3
    from megaphi.convert.checkpoint import load_model_checkpoint

    config, shards, meta = load_model_checkpoint(root)  # the tag dir is a model checkpoint (contract 3)
    assert meta["path"].endswith("step8") and meta["tensor_parallel_size"] == 1 and config.hidden_size == 128
    assert len(shards) == 1 and "model.layers.0.self_attn.qkv_proj.weight" in shards[0]


def test_zero2_with_two_data_parallel_ranks_matches_one_process(tmp_path, tiny_corpus, reference):
    train(tmp_path, tiny_corpus, tmp_path / "dp2", nproc=2)
    ours, ref = read_metrics(tmp_path / "dp2" / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref], abs=TOLERANCE)
    assert [r["grad_norm"] for r in ours] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-4)
    assert [r["consumed_samples"] for r in ours] == [r["consumed_samples"] for r in ref]


def test_tensor_parallel_two_matches_one_process_and_checkpoints_merge(tmp_path, tiny_corpus, reference):
    train(tmp_path, tiny_corpus, tmp_path / "tp2", "train.tensor_parallel_size=2", nproc=2)
    ours, ref = read_metrics(tmp_path / "tp2" / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref], abs=TOLERANCE)
    # Sharded parameters are counted once in the global gradient norm (DeepSpeed reads the mpu).
    assert [r["grad_norm"] for r in ours] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-4)

    from megaphi.convert.checkpoint import load_model_checkpoint
    from megaphi.convert.layout import merge_state_dicts

    config, shards, meta = load_model_checkpoint(tmp_path / "tp2" / "checkpoints")
    assert meta["tensor_parallel_size"] == 2
    merged = merge_state_dicts(shards, config)
    ref_config, ref_shards, _ = load_model_checkpoint(reference / "checkpoints")
    expected = merge_state_dicts(ref_shards, ref_config)
    # Compared as relative Frobenius error per tensor, within 1e-3: Adam divides each coordinate by its
    # own gradient scale, so coordinates whose gradient is zero up to rounding (the key bias: softmax
    # ignores a shift shared by all keys; rare tokens' embedding rows) take lr-sized steps driven by
    # last-bit noise, ~3e-4 of the tensor here. A misplaced or mis-merged shard is off by ~100%.
    for name, tensor in expected.items():
        error = (merged[name] - tensor).norm() / tensor.norm()
        assert error < 1e-3, f"{name}: relative error {error:.2e}"


def test_resume_on_two_data_parallel_ranks_continues_with_the_same_samples(tmp_path, tiny_corpus, reference):
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step4", root / "step4")
    (root / "latest").write_text("step4")
    result = train(tmp_path, tiny_corpus, tmp_path / "run", "--resume", "auto", nproc=2)
    assert "resuming at step 4 (32 samples)" in result.stdout
    ours, ref = read_metrics(tmp_path / "run" / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in ours] == [5, 6, 7, 8]
    assert [r["consumed_samples"] for r in ours] == [40, 48, 56, 64]
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref[4:]], abs=TOLERANCE)


def test_resume_with_more_steps_follows_the_longer_schedule_and_says_so(tmp_path, tiny_corpus, reference):
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step4", root / "step4")
    (root / "latest").write_text("step4")
    result = train(tmp_path, tiny_corpus, tmp_path / "run", "train.steps=12", "--resume", "auto")
    optim = OptimSection(lr=3e-3, min_lr=3e-4, warmup_steps=2, decay="linear")
    notice = [line for line in result.stdout.splitlines() if "learning-rate schedule differs" in line]
    assert notice == [
        f"megaphi.train: the learning-rate schedule differs from the checkpoint's: saved (warmup 2, "
        f"linear 0.003 -> 0.0003 by step 8), now (warmup 2, linear 0.003 -> 0.0003 by step 12); step 5 "
        f"runs at lr {learning_rate(4, optim, 12):.3e} instead of {learning_rate(4, optim, 8):.3e}; "
        "set optim.decay_steps=8 to keep the saved curve"
    ], result.stdout
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, 13))
    assert [r["lr"] for r in records] == pytest.approx([learning_rate(s, optim, 12) for s in range(4, 12)])


def test_sigkill_at_a_random_step_then_resume_auto_reproduces_every_loss_bit_for_bit(tmp_path, tiny_corpus):
    """With dropout on, so the restored RNG streams matter as much as weights, optimizer and data position."""
    train(tmp_path, tiny_corpus, tmp_path / "straight", *DROPOUT)

    run_dir = tmp_path / "killed"
    kill_at = random.Random().randint(3, STEPS - 1)  # step 3 starts after step 2's checkpoint is written
    args = ["--config", recipe(tmp_path, tiny_corpus), f"run_dir={run_dir}", *DROPOUT]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(trainer_command(1) + args, cwd=REPO, env=trainer_env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and any(
                json.loads(line)["step"] >= kill_at for line in metrics.read_text().splitlines() if line.endswith("}")
            ):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    log = (tmp_path / "killed.log").read_text()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before step {kill_at}: {log[-2000:]}"

    resumed = train(tmp_path, tiny_corpus, run_dir, *DROPOUT, "--resume", "auto")
    assert "resuming at step" in resumed.stdout, f"killed at step {kill_at}"
    ours, ref = read_metrics(run_dir / "metrics.jsonl"), read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1)), f"killed at step {kill_at}"
    assert [r["loss"] for r in ours] == [r["loss"] for r in ref], f"killed at step {kill_at}"
    assert [r.get("val_loss") for r in ours] == [r.get("val_loss") for r in ref]
    assert [r["consumed_samples"] for r in ours] == [r["consumed_samples"] for r in ref]


def test_bf16_skips_an_inf_gradient_and_a_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, tiny_corpus):
    run_dir = tmp_path / "run"
    result = train(
        tmp_path,
        tiny_corpus,
        run_dir,
        "train.precision=bf16",
        "--inf-grad-at=2",
        "--nan-loss-at=3",
        expect_rc=3,
        module=FAULTS,
    )
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("training stopped: loss is nan at step 3 in bf16"), last
    assert last.endswith(f"last good checkpoint: {run_dir / 'checkpoints' / 'step2'}"), last
    assert (run_dir / "checkpoints" / "latest").read_text() == "step2"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step*")) == ["step2"]
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["skipped"] for r in records[:2]] == [False, True]  # the update with an inf gradient is not applied
    assert records[1]["loss"] == records[1]["loss"]  # its loss was finite: only the gradient was poisoned


def test_finetuning_starts_from_a_checkpoint_resharded_to_another_tensor_parallel_size(
    tmp_path, tiny_corpus, reference
):
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    run_dir = tmp_path / "finetune"
    train(
        tmp_path,
        tiny_corpus,
        run_dir,
        f"checkpoint.init_from={reference / 'checkpoints'}",
        "train.tensor_parallel_size=2",
        "train.steps=2",
        "optim.warmup_steps=1",
        f"data.tokenizer={tokenizer}",
        "model.preset=phi-1",
        nproc=2,
    )  # the architecture comes from the checkpoint, not the preset
    first = read_metrics(run_dir / "metrics.jsonl")[0]["loss"]
    # A fresh phi-tiny starts near ln(2048) = 7.62; the pretrained weights already predict the progressions.
    assert first < read_metrics(reference / "metrics.jsonl")[-1]["loss"] + 0.1 < 7.0
    meta = json.loads((run_dir / "checkpoints" / "step2" / "megaphi.json").read_text())
    assert (meta["tensor_parallel_size"], meta["model"]["hidden_size"], meta["tokenizer"]) == (2, 128, "tokenizer")
    assert (run_dir / "checkpoints" / "step2" / "tokenizer" / "tokenizer.json").is_file()


# fp16 runs go through the test launcher with --fp16-on-cpu, which lets DeepSpeed's CPU accelerator
# run fp16 (see its docstring); everything else is the real trainer with DeepSpeed's ZeRO-2 fp16
# optimizer and dynamic loss scaler. The scale starts at 16 and halves at every overflow (hysteresis 1).
FP16 = [
    "--fp16-on-cpu",
    "train.precision=fp16",
    "train.initial_loss_scale_power=4",
    "train.loss_scale_hysteresis=1",
    "checkpoint.keep_last=0",
]


def module_weights(tag_dir) -> dict[str, torch.Tensor]:
    return torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory, tiny_corpus):
    """fp16 ZeRO-2 on two data-parallel ranks, with an inf gradient injected at step 2."""
    tmp = tmp_path_factory.mktemp("fp16")
    train(tmp, tiny_corpus, tmp / "run", *FP16, "--inf-grad-at=2", nproc=2, module=FAULTS)
    return tmp / "run"


def test_inf_gradient_in_fp16_skips_the_step_halves_the_scale_and_training_continues(fp16_run):
    records = read_metrics(fp16_run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["skipped"] for r in records] == [False, True] + [False] * (STEPS - 2)
    assert [r["loss_scale"] for r in records] == [16] + [8] * (STEPS - 1)
    assert records[1]["grad_norm"] is None and all(r["grad_norm"] > 0 for r in records[2:])
    assert records[-1]["loss"] < records[0]["loss"] - 0.3  # it still learns after the skipped step
    engine_state = torch.load(fp16_run / "checkpoints" / "step8" / "mp_rank_00_model_states.pt", weights_only=False)
    assert all(t.dtype == torch.float16 for t in engine_state["module"].values())  # the model really ran in fp16
    assert (engine_state["global_steps"], engine_state["skipped_steps"]) == (STEPS, 1)  # DeepSpeed's own count


def test_fp16_resume_keeps_the_loss_scale_and_a_scale_stuck_at_its_minimum_stops(tmp_path, tiny_corpus, fp16_run):
    """Resumed from step 2 with the scale at 8, then overflowing from step 5 on with a minimum scale of 4."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(fp16_run / "checkpoints" / "step2", run_dir / "checkpoints" / "step2")
    (run_dir / "checkpoints" / "latest").write_text("step2")
    result = train(
        tmp_path,
        tiny_corpus,
        run_dir,
        *FP16,
        "train.min_loss_scale=4",
        "train.max_steps_at_min_loss_scale=2",
        "--inf-grad-at=5,6,7",
        "--resume",
        "auto",
        nproc=2,
        module=FAULTS,
        expect_rc=1,
    )
    assert "exitcode  : 3" in result.stderr  # torchrun exits 1 when a rank fails and shows the rank's own status
    ours, ref = read_metrics(run_dir / "metrics.jsonl"), read_metrics(fp16_run / "metrics.jsonl")
    assert [r["step"] for r in ours] == [3, 4, 5, 6, 7]
    assert [r["loss"] for r in ours[:2]] == [r["loss"] for r in ref[2:4]]  # exact: the same fp16 arithmetic
    assert [r["skipped"] for r in ours] == [False, False, True, True, True]
    # 8 restored from the checkpoint (not the initial 16); the minimum 4 is this run's, not the saving run's 1.
    assert [r["loss_scale"] for r in ours] == [8, 8, 4, 4, 4]
    # Step 5 overflowed at scale 8 and could still lower it; steps 6 and 7 overflowed at the minimum.
    stops = [line for line in result.stderr.splitlines() if line.startswith("training stopped")]
    assert len(stops) == 1, result.stderr[-3000:]  # a job-wide decision: rank 0 reports it
    assert stops[0].startswith(
        "training stopped: fp16 loss scale stuck at its minimum 4 with overflowing gradients for 2 steps (step 7)"
    ), stops[0]
    assert stops[0].endswith(f"last good checkpoint: {run_dir / 'checkpoints' / 'step7'}"), stops[0]
    root = run_dir / "checkpoints"
    assert (root / "latest").read_text() == "step7"
    good, last_saved = module_weights(root / "step4"), module_weights(root / "step7")
    assert all(torch.equal(good[name], last_saved[name]) for name in good)  # skipped updates changed nothing
    assert not torch.equal(good["lm_head.weight"], module_weights(root / "step2")["lm_head.weight"])
