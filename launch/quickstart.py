"""The whole phi-1 recipe at toy scale, on the CPU, on the data every machine has.

Each step is the command a user would type, printed before it runs, so this file doubles as a
walk-through. The real recipe differs in scale only: The Stack instead of the standard library, an
LLM annotator instead of the heuristic one, GPT-3.5 (or a served large model) instead of the toy
model for synthesis, phi-1 instead of phi-tiny, GPUs instead of two CPU processes.

    bash launch/quickstart.sh            # installs what is missing, then runs this
    .venv/bin/python launch/quickstart.py --work-dir runs/quickstart --train-steps 60

The synthetic textbooks and exercises come from the toy model the recipe has just pretrained,
served through megaphi.serve: they are not good text, and the exercise validator rejects most or all
of them. What the quickstart shows is that every stage runs and hands the next one what it needs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from megaphi.common.checkpoints import resolve_checkpoint_dir
from megaphi.common.net import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


class Quickstart:
    def __init__(self, work: Path, start_at: int = 1):
        self.work = work
        self.start_at = start_at
        self.step_no = 0
        self.started = time.monotonic()

    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n=== {self.step_no}. {title}  [{time.monotonic() - self.started:.0f}s]", flush=True)

    @property
    def skipping(self) -> bool:
        """Steps before --start-at are skipped: their outputs are already in the work dir."""
        return self.step_no < self.start_at

    def run(self, *args: str, env: dict[str, str] | None = None) -> None:
        print(("(skipped) $ " if self.skipping else "$ ") + " ".join(shlex.quote(a) for a in args), flush=True)
        if self.skipping:
            return
        result = subprocess.run(args, cwd=ROOT, env={**os.environ, **(env or {})})
        if result.returncode != 0:
            raise SystemExit(f"quickstart: step {self.step_no} failed (exit {result.returncode}): {' '.join(args)}")


def wait_for_server(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"quickstart: megaphi.serve exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"quickstart: megaphi.serve did not answer {url} within {timeout_s:.0f}s")


def model_vocab(tokenizer: Path) -> int:
    """The model's vocab_size for a tokenizer: its entries, added tokens included."""
    sys.path.insert(0, str(ROOT))
    from data_tools.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer).vocab_size


def shards(data: Path, prefix: str) -> list[str]:
    """The JSONL shards a stage wrote, as a shell would expand ``PREFIX-*.jsonl``."""
    found = sorted(str(p) for p in data.glob(f"{prefix}-*.jsonl"))
    if not found:
        raise SystemExit(f"quickstart: no {prefix}-*.jsonl shards in {data}: the previous step wrote nothing")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/quickstart", help="everything is written under it")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2, help="training processes (data parallel, CPU)")
    parser.add_argument("--synth-count", type=int, default=6, help="textbooks and exercises each")
    parser.add_argument("--start-at", type=int, default=1, help="skip the steps before this one (their outputs exist)")
    parser.add_argument("--eval-problems", type=int, default=16, help="HumanEval problems generated and scored")
    args = parser.parse_args(argv)

    work = (ROOT / args.work_dir).resolve()
    if args.start_at == 1 and work.exists():
        shutil.rmtree(work)  # a fresh run: the stages refuse to mix their outputs with an earlier run's
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    q = Quickstart(work, args.start_at)
    env = {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    os.environ.update(env)

    q.step("Gather code: the standard library of this Python into JSONL shards")
    # A slice of the library keeps the toy run to minutes: modules whose path starts with a-e, no tests.
    q.run(PY, "-m", "data_tools.corpus", "--output-prefix", str(data / "corpus"), "--include", "[a-e]*.py",
          "--exclude", "*/test/*", "*/tests/*", "*/idle_test/*", "*/site-packages/*", "*/__pycache__/*",
          "--min-bytes", "400", "--max-bytes", "20000", "--no-progress")

    q.step("Educational-value filter: annotate (offline heuristic annotator), embed + random forest, filter")
    q.run(PY, "-m", "data_tools.quality", "annotate", "--input", *shards(data, "corpus"),
          "--annotator", "heuristic", "--out", str(data / "annotations.jsonl"), "--no-progress")
    q.run(PY, "-m", "data_tools.quality", "train", "--input", *shards(data, "corpus"),
          "--annotations", str(data / "annotations.jsonl"), "--out", str(work / "quality_classifier"))
    q.run(PY, "-m", "data_tools.quality", "filter", "--input", *shards(data, "corpus"),
          "--classifier", str(work / "quality_classifier"), "--output-prefix", str(data / "filtered"))

    q.step("Deduplicate: exact and MinHash near duplicates")
    q.run(PY, "-m", "data_tools.dedup", "--input", *shards(data, "filtered"),
          "--output-prefix", str(data / "dedup"), "--no-progress")

    q.step("Decontaminate the code against HumanEval (13-gram, embedding + AST)")
    q.run(PY, "-m", "data_tools.decontaminate", "--input", *shards(data, "dedup"),
          "--output-prefix", str(data / "clean"), "--benchmarks", "humaneval")

    q.step("Train a byte-level BPE tokenizer like codegen-350M-mono's (toy vocabulary)")
    tokenizer = work / "tokenizer"
    q.run(PY, "-m", "data_tools.tokenizer", "train", "--input", *shards(data, "clean"),
          "--output", str(tokenizer), "--vocab-size", str(args.vocab_size))

    q.step("Tokenize into Megatron-compatible .bin/.idx")
    q.run(PY, "-m", "data_tools.preprocess", "--input", *shards(data, "clean"), "--output-prefix",
          str(data / "code"), "--tokenizer", str(tokenizer), "--append-eod", "--workers", "2", "--no-progress")

    q.step(f"Pretrain phi-tiny: DeepSpeed ZeRO-2, {args.nproc} CPU processes (torchrun)")
    pretrain = work / "pretrain"
    q.run(PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "-m", "megaphi.train",
          "--config", "configs/phi_tiny_cpu.yaml", f"run_dir={pretrain}", f"model.overrides.vocab_size={model_vocab(tokenizer)}",
           f"data.paths=[{data / 'code_text_document'}]",
          f"data.tokenizer={tokenizer}", f"train.steps={args.train_steps}", "checkpoint.interval=20",
          "eval.interval=20", "logging.interval=10")

    q.step("Synthesize textbooks and exercises through an OpenAI-compatible server over the model")
    port = free_port("127.0.0.1")
    checkpoint = resolve_checkpoint_dir(pretrain / "checkpoints")
    server = None if q.skipping else subprocess.Popen([PY, "-m", "megaphi.serve", "--model", str(checkpoint), "--port", str(port),
                               "--served-model-name", "phi-tiny"], cwd=ROOT)
    try:
        if server is not None:
            wait_for_server(f"http://127.0.0.1:{port}/health", server)
        endpoint = ["--base-url", f"http://127.0.0.1:{port}/v1", "--api-key", "local", "--model", "phi-tiny"]
        for kind in ("textbooks", "exercises"):
            q.run(PY, "-m", "data_tools.synth", kind, "--count", str(args.synth_count), "--out",
                  str(data / f"{kind}.jsonl"), "--max-tokens", "96", "--api", "completion", "--keep-truncated",
                  "--no-progress", *endpoint)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

    q.step("Decontaminate the synthetic textbooks and tokenize them for finetuning")
    q.run(PY, "-m", "data_tools.decontaminate", "--input", str(data / "textbooks.jsonl"),
          "--output-prefix", str(data / "synthetic"), "--benchmarks", "humaneval")
    q.run(PY, "-m", "data_tools.preprocess", "--input", *shards(data, "synthetic"), "--output-prefix",
          str(data / "synthetic"), "--tokenizer", str(tokenizer), "--append-eod", "--no-progress")

    q.step("Finetune from the pretrained checkpoint on the synthetic set")
    finetune = work / "finetune"
    q.run(PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "-m", "megaphi.train",
          "--config", "configs/phi_tiny_cpu.yaml", f"run_dir={finetune}",
          f"data.paths=[{data / 'synthetic_text_document'}]", f"data.tokenizer={tokenizer}",
          f"checkpoint.init_from={checkpoint}", f"train.steps={args.finetune_steps}", "optim.lr=1e-4", "optim.warmup_steps=2",
          "data.split=100,0,0", "checkpoint.interval=10", "eval.interval=0", "logging.interval=5")

    q.step("Convert the finetuned checkpoint to a Hugging Face PhiForCausalLM directory")
    hf_dir = work / "hf"
    q.run(PY, "-m", "megaphi.convert", "to-hf", "--checkpoint", str(finetune / "checkpoints"), "--out", str(hf_dir))

    q.step("Evaluate on HumanEval: generate, score in the bubblewrap sandbox, report")
    q.run(PY, "-m", "megaphi.eval", "run", "--model", str(hf_dir), "--benchmark", "humaneval",
          "--limit", str(args.eval_problems), "--max-new-tokens", "64", "--out-dir", str(work / "eval"))

    summary = json.loads((work / "eval" / "report.json").read_text())
    print(f"\nquickstart finished in {time.monotonic() - q.started:.0f}s; everything is under {work}")
    print(json.dumps(summary.get("summary", summary), indent=1)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
