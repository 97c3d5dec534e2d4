"""The whole phi-1 recipe at toy scale, on the CPU, on the data every machine has.

Each stage runs the commands a user would type, printed before they run, so this file doubles as a
walk-through. The real recipe differs in scale only: The Stack instead of the standard library, an
LLM annotator instead of the heuristic one, GPT-3.5 (or a served large model) instead of the toy
model for synthesis, phi-1 instead of phi-tiny, GPUs instead of two CPU processes.

    bash launch/quickstart.sh                       # installs what is missing, then runs this
    .venv/bin/python launch/quickstart.py --train-steps 120
    .venv/bin/python launch/quickstart.py --start-at finetune   # redo finetune and what follows
    .venv/bin/python launch/quickstart.py --fresh               # wipe the work dir, redo everything

A rerun skips every stage whose outputs are complete and whose inputs and parameters are unchanged
(see launch/pipeline.py), redoes the ones that changed and every stage after them that reads their
outputs, and says which and why. Only --fresh deletes the whole work directory. At the end it writes
REPORT.md and report.json into the work directory (one row per stage, loss curves, the quality
histogram, the evaluation numbers, where every output lives) and prints the path of REPORT.md.

The synthetic textbooks and exercises come from the toy model the recipe has just pretrained, served
through megaphi.serve: they are not good text, and the exercise validator rejects most or all of them.
So the finetuning set is the small hand-written exercise set of launch/quickstart_exercises.jsonl (MBPP's
format) plus whatever synthetic exercise passed, and the model is evaluated on HumanEval and on those
exercises themselves: a toy model can learn them by heart, not solve anything new.

(Over 400 lines on purpose: it is the recipe's walk-through, one table of the twelve stages with
every command in the order it runs, read top to bottom; the machinery that skips or runs them is
launch/pipeline.py, the report launch/quickstart_report.py.)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from megaphi.common.checkpoints import read_latest
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.common.jsonl import read_jsonl
from megaphi.common.net import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from launch.pipeline import Outcome, Pipeline, Stage  # noqa: E402
from launch.quickstart_report import (  # noqa: E402
    diversity_counts,
    jsonl_lines,
    read_json,
    report_fields,
    token_counts,
    training_counts,
    write_report,
)

PY = sys.executable
EXERCISES = ROOT / "launch" / "quickstart_exercises.jsonl"


# ------------------------------------------------------------------------------------------------
# Small helpers the stages use


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


@contextlib.contextmanager
def served(checkpoint: Path, port: int) -> Iterator[None]:
    """megaphi.serve over ``checkpoint`` while the synthesis commands run."""
    server = subprocess.Popen(
        [PY, "-m", "megaphi.serve", "--model", str(checkpoint), "--port", str(port), "--served-model-name", "phi-tiny"],
        cwd=ROOT,
    )
    try:
        wait_for_server(f"http://127.0.0.1:{port}/health", server)
        yield
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


# What data_tools.decontaminate writes beside its PREFIX-RRRRR-NNNNN.jsonl shards (removed with them on a rerun).
DECONTAMINATION_SIDE_OUTPUTS = (
    ".removed.jsonl",
    ".decontamination.json",
    ".decontamination.md",
    ".decontamination-tasks",
    ".datatrove/decontaminate",
    ".datatrove/decontaminate-report",
)


def shards(data: Path, prefix: str) -> list[Path]:
    """The JSONL shards a stage wrote, as a shell would expand ``PREFIX-*.jsonl``."""
    return sorted(data.glob(f"{prefix}-*.jsonl"))


def latest_checkpoint(run_dir: Path) -> Path:
    """The run's newest checkpoint, or its checkpoint root while it has none (a stage key still names it)."""
    root = run_dir / "checkpoints"
    return root / (read_latest(root) or "")


def render_exercises(source: Path, out: Path) -> None:
    """The seed exercises as finetuning documents: the prompt the evaluation shows, then the solution."""
    from megaphi.eval.benchmarks import mbpp_prompt

    with out.open("w", encoding="utf-8") as f:
        for row in read_jsonl(source):
            text = mbpp_prompt(row["text"], row["test_list"][0]) + row["code"] + "\n"
            f.write(json.dumps({"text": text, "id": f"seed-exercise-{row['task_id']}"}) + "\n")


# ------------------------------------------------------------------------------------------------
# The recipe


def python_m(module: str, *args: str | Path) -> list[str]:
    """``python -m MODULE ARGS...``: a command as a user would type it."""
    return [PY, "-m", module, *map(str, args)]


def tokenize(inputs: list[Path] | list[str], prefix: Path, tokenizer: Path) -> list[str]:
    """JSONL documents -> ``{prefix}_text_document.bin/.idx``, an end-of-text token after each document."""
    return python_m(
        "data_tools.preprocess", "--input", *inputs, "--output-prefix", prefix, "--tokenizer", tokenizer,
        "--append-eod", "--no-progress",
    )  # fmt: skip


def text_document(prefix: Path) -> list[Path]:
    """The .bin/.idx pair ``tokenize`` writes for ``prefix``."""
    return [Path(f"{prefix}_text_document{suffix}") for suffix in (".bin", ".idx")]


@functools.cache
def serve_port() -> int:
    """The port of the local model server, one per quickstart process: every stage built asks the same."""
    return free_port()


def build_stages(args: argparse.Namespace, work: Path) -> list[Stage]:
    """The recipe as one table, a row per stage: its name, what it does, the commands it runs (built
    when its turn comes, since they name what earlier stages wrote), what it reads, what it writes and
    what its report row counts. Skipping, rerunning, --start-at and the report all read this table."""
    data = work / "data"
    tokenizer = work / "tokenizer"
    pretrain, finetune, hf_dir, evals = work / "pretrain", work / "finetune", work / "hf", work / "eval"
    code, textbooks, exercises = data / "code", data / "synthetic_textbooks", data / "code_exercises"
    train = python_m(
        "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "-m", "megaphi.train",
        "--config", "configs/phi_tiny_cpu.yaml",
    )  # fmt: skip
    recipe = [ROOT / "configs" / "phi_tiny_cpu.yaml", ROOT / "ds_configs" / "cpu.json"]
    quality = data / "filtered.quality.json"
    synthetic = ("textbooks", "exercises")

    def vocab() -> int:
        from megaphi.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer).vocab_size

    def port_endpoint() -> tuple[int, list[str]]:
        port = serve_port()
        return port, ["--base-url", f"http://127.0.0.1:{port}/v1", "--api-key", "local", "--model", "phi-tiny"]

    def passed_exercises() -> list[Path]:
        """The synthetic exercises that passed validation, when any did (an empty file is no input)."""
        return [data / "exercises.jsonl"] if jsonl_lines(data / "exercises.jsonl") else []

    # Laid out by hand: each command reads like the line a user would type (the formatter would put
    # every argument on a line of its own).
    # fmt: off
    return [
        Stage(
            "corpus",
            "gather code: the standard library of this Python into JSONL shards",
            # A slice of the library keeps the toy run to minutes: no tests, files of 400 B to 20 kB.
            lambda: [
                python_m(
                    "data_tools.corpus", "--output-prefix", data / "corpus", "--include", args.corpus_include,
                    "--exclude", "*/test/*", "*/tests/*", "*/idle_test/*", "*/site-packages/*", "*/__pycache__/*",
                    "--min-bytes", "400", "--max-bytes", "20000", "--no-progress",
                ),
            ],
            lambda: [],
            # the first task's shard, the corpus report and the task markers (removed with it on a rerun)
            [data / "corpus-00000-00000.jsonl", data / "corpus.corpus.json", data / "corpus.datatrove"],
            lambda: {"documents kept": jsonl_lines(*shards(data, "corpus"))},
        ),
        Stage(
            "quality",
            "educational-value filter: heuristic annotator (offline), embeddings + random forest, filter",
            lambda: [
                python_m(
                    "data_tools.quality", "annotate", "--input", *shards(data, "corpus"), "--annotator", "heuristic",
                    "--out", data / "annotations.jsonl", "--no-progress",
                ),
                python_m(
                    "data_tools.quality", "train", "--input", *shards(data, "corpus"),
                    "--annotations", data / "annotations.jsonl", "--out", work / "quality_classifier",
                ),
                python_m(
                    "data_tools.quality", "filter", "--input", *shards(data, "corpus"),
                    "--classifier", work / "quality_classifier", "--output-prefix", data / "filtered",
                ),
            ],
            lambda: shards(data, "corpus"),
            [
                data / "annotations.jsonl",
                work / "quality_classifier",
                data / "filtered-00000-00000.jsonl",
                data / "filtered.datatrove",  # the filter's task markers: a rerun after removal runs every task
                quality,
                data / "filtered.quality.png",
            ],
            lambda: {
                "documents scored": read_json(quality).get("documents"),
                "kept": read_json(quality).get("kept"),
                f"removed (quality score below {read_json(quality).get('threshold')})": read_json(quality).get("removed"),
            },
        ),
        Stage(
            "dedup",
            "deduplicate: exact and MinHash near duplicates",
            lambda: [python_m("data_tools.dedup", "--input", *shards(data, "filtered"), "--output-prefix", data / "dedup")],
            lambda: shards(data, "filtered"),
            # the work directory too: its completion markers would make a rerun skip every task
            [data / "dedup-00000-00000.jsonl", data / "dedup.removed.jsonl", data / "dedup.dedup.json", data / "dedup.datatrove"],
            lambda: report_fields(data / "dedup.dedup.json", "documents", "kept", "exact_duplicates", "near_duplicates"),
        ),
        Stage(
            "decontaminate",
            "decontaminate the code against HumanEval (13-gram overlap)",
            lambda: [
                python_m(
                    "data_tools.decontaminate", "--input", *shards(data, "dedup"), "--output-prefix", data / "clean",
                    "--benchmarks", "humaneval",
                ),
            ],
            lambda: shards(data, "dedup"),
            [data / "clean-00000-00000.jsonl", *(data / f"clean{suffix}" for suffix in DECONTAMINATION_SIDE_OUTPUTS)],
            lambda: report_fields(data / "clean.decontamination.json", "documents", "kept", "removed_ngram", "removed_ast"),
        ),
        Stage(
            "tokenizer",
            "train a byte-level BPE tokenizer like codegen-350M-mono's (toy vocabulary)",
            lambda: [
                python_m(
                    "data_tools.tokenizer", "train", "--input", *shards(data, "clean"), "--output", tokenizer,
                    "--vocab-size", str(args.vocab_size),
                ),
            ],
            lambda: shards(data, "clean"),
            [tokenizer],
            lambda: {"vocab size (with added tokens)": vocab()},
        ),
        Stage(
            "tokenize",
            "tokenize into Megatron-compatible .bin/.idx",
            lambda: [tokenize(shards(data, "clean"), code, tokenizer)],
            lambda: [*shards(data, "clean"), tokenizer],
            # the task markers too: a rerun over changed inputs must not find its tasks already done
            [*text_document(code), data / "code.datatrove"],
            lambda: token_counts(data / "code_text_document"),
        ),
        Stage(
            "pretrain",
            f"pretrain phi-tiny: DeepSpeed ZeRO-2, {args.nproc} CPU processes (torchrun)",
            lambda: [
                [
                    *train, f"run_dir={pretrain}", f"model.overrides.vocab_size={vocab()}",
                    f"data.paths=[{data / 'code_text_document'}]", f"data.tokenizer={tokenizer}",
                    f"train.steps={args.train_steps}", "checkpoint.interval=20", "eval.interval=20", "logging.interval=10",
                ],
            ],
            lambda: [*text_document(code), tokenizer, *recipe],
            [pretrain],
            lambda: training_counts(pretrain),
        ),
        Stage(
            "synth",
            "synthesize textbooks and exercises through an OpenAI-compatible server over the toy model",
            lambda: [
                python_m(
                    "data_tools.synth", kind, "--count", str(args.synth_count), "--out", data / f"{kind}.jsonl",
                    "--max-tokens", "96", "--api", "completion", "--keep-truncated", "--no-progress",
                    *port_endpoint()[1],
                )
                for kind in synthetic
            ],
            lambda: [latest_checkpoint(pretrain)],
            # the merged files, and the per-task files and logs a rerun would otherwise resume from
            [
                data / f"{kind}{suffix}"
                for kind in synthetic
                for suffix in (".jsonl", ".failures.jsonl", ".summary.json", ".tasks", ".datatrove")
            ],
            lambda: {
                "textbooks": jsonl_lines(data / "textbooks.jsonl"),
                "exercises that passed validation": jsonl_lines(data / "exercises.jsonl"),
                "failed or rejected requests": jsonl_lines(*(data / f"{kind}.failures.jsonl" for kind in synthetic)),
            },
            around=lambda: served(latest_checkpoint(pretrain), port_endpoint()[0]),
            unkeyed=lambda: [port_endpoint()[1][1]],  # the server's address changes from run to run
        ),
        Stage(
            "synthetic-data",
            "tokenize the synthetic textbooks; decontaminate and tokenize the exercises",
            lambda: [
                tokenize([data / "textbooks.jsonl"], textbooks, tokenizer),
                # how diverse the synthetic data is (issue of the paper's scale: see data_tools.synth_report)
                python_m(
                    "data_tools.synth", "report", "--input", data / "textbooks.jsonl", *passed_exercises(),
                    "--out-dir", data / "diversity", "--no-progress",
                ),
                [PY, str(ROOT / "launch" / "quickstart.py"), "--render-exercises", str(EXERCISES), str(data / "seed_exercises.jsonl")],
                # the exercises get the embedding and AST checks too, as in the paper
                python_m(
                    "data_tools.decontaminate", "--deep-input", data / "seed_exercises.jsonl", *passed_exercises(),
                    "--output-prefix", exercises, "--benchmarks", "humaneval",
                ),
                # a glob: these shards are written by the command before, after this list is built
                tokenize([f"{exercises}-*.jsonl"], exercises, tokenizer),
            ],
            lambda: [data / "textbooks.jsonl", data / "exercises.jsonl", EXERCISES, tokenizer],
            [
                *text_document(textbooks),
                *(data / "diversity" / name for name in ("diversity.json", "diversity.md", "diversity.png")),
                data / "seed_exercises.jsonl",
                data / "code_exercises-00000-00000.jsonl",
                *(data / f"code_exercises{suffix}" for suffix in DECONTAMINATION_SIDE_OUTPUTS),
                *text_document(exercises),
                # the task markers of both tokenizations: without them a rerun would find its tasks done and
                # write no .bin/.idx
                data / "synthetic_textbooks.datatrove",
                data / "code_exercises.datatrove",
            ],
            lambda: {
                "textbook tokens": token_counts(data / "synthetic_textbooks_text_document").get("tokens"),
                **diversity_counts(data / "diversity" / "diversity.json"),
                "exercises kept": read_json(data / "code_exercises.decontamination.json").get("kept"),
                "exercises removed as contaminated": sum(
                    read_json(data / "code_exercises.decontamination.json").get(k, 0) for k in ("removed_ngram", "removed_ast")
                ),
                "exercise tokens": token_counts(data / "code_exercises_text_document").get("tokens"),
            },
        ),
        Stage(
            "finetune",
            "finetune from the pretrained checkpoint on the exercises (phi-1's CodeExercises stage)",
            lambda: [
                [
                    *train, f"run_dir={finetune}", f"data.paths=[{data / 'code_exercises_text_document'}]",
                    f"data.tokenizer={tokenizer}", f"checkpoint.init_from={latest_checkpoint(pretrain)}",
                    # A constant, high rate: the toy model has to learn ten exercises by heart in a minute.
                    f"train.steps={args.finetune_steps}", "optim.lr=3e-3", "optim.decay=constant", "optim.warmup_steps=2",
                    "data.split=100,0,0", "checkpoint.interval=20", "eval.interval=0", "logging.interval=5",
                ],
            ],
            lambda: [*text_document(exercises), latest_checkpoint(pretrain), tokenizer, *recipe],
            [finetune],
            lambda: training_counts(finetune),
        ),
        Stage(
            "convert",
            "convert the finetuned checkpoint to a Hugging Face PhiForCausalLM directory",
            lambda: [python_m("megaphi.convert", "to-hf", "--checkpoint", finetune / "checkpoints", "--out", hf_dir)],
            lambda: [latest_checkpoint(finetune)],
            [hf_dir],
        ),
        Stage(
            "eval",
            "evaluate: HumanEval and the seed exercises, generated, scored in the bubblewrap sandbox",
            lambda: [
                python_m(
                    "megaphi.eval", "run", "--model", hf_dir, "--benchmark", "humaneval",
                    "--limit", str(args.eval_problems), "--max-new-tokens", "64", "--out-dir", evals / "humaneval",
                ),
                python_m(
                    "megaphi.eval", "run", "--model", hf_dir, "--benchmark", "mbpp", "--mbpp-path", EXERCISES,
                    "--mbpp-split", "prompt", "--max-new-tokens", "64", "--out-dir", evals / "exercises",
                ),
            ],
            lambda: [hf_dir, EXERCISES],
            [evals],
            lambda: {
                f"{name} pass@1": read_json(evals / name / "report.json").get("summary", {}).get("pass@1")
                for name in ("humaneval", "exercises")
            },
        ),
    ]
    # fmt: on


# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/quickstart", help="everything is written under it")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--nproc", type=int, default=2, help="training processes (data parallel, CPU)")
    parser.add_argument("--synth-count", type=int, default=6, help="textbooks and exercises each")
    parser.add_argument("--eval-problems", type=int, default=16, help="HumanEval problems generated and scored")
    parser.add_argument(
        "--corpus-include", default="[a-e]*.py", help="which standard-library files to gather (a glob on their path)"
    )
    parser.add_argument(
        "--start-at",
        default=None,
        metavar="STAGE",
        help="rerun from this stage (name or number) on; the stages before it are taken as they are",
    )
    parser.add_argument("--stop-after", default=None, metavar="STAGE", help="stop after this stage (name or number)")
    parser.add_argument("--fresh", action="store_true", help="delete the work directory first and redo every stage")
    parser.add_argument("--render-exercises", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def stage_index(stages: list[Stage], value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    names = [s.name for s in stages]
    if value.isdigit() and 1 <= int(value) <= len(stages):
        return int(value) - 1
    if value in names:
        return names.index(value)
    raise UserError(f"{flag} {value!r} is not a stage; give a number 1-{len(stages)} or one of {', '.join(names)}")


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_exercises:
        render_exercises(Path(args.render_exercises[0]), Path(args.render_exercises[1]))
        return 0
    work = (ROOT / args.work_dir).resolve()
    stages = build_stages(args, work)
    start = stage_index(stages, args.start_at, "--start-at")
    stop = stage_index(stages, args.stop_after, "--stop-after")
    if args.fresh and start:
        raise UserError("--fresh deletes every stage's outputs; it cannot start after stage 1")
    if args.fresh and work.exists():
        print(f"--fresh: deleting {work}", flush=True)
        shutil.rmtree(work)
    (work / "data").mkdir(parents=True, exist_ok=True)
    env = {
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "MEGAPHI_PROGRESS_INTERVAL": "10",
    }
    pipeline = Pipeline(work, ROOT, env)
    outcomes: list[Outcome] = []
    for index, stage in enumerate(stages[: None if stop is None else stop + 1]):
        # A stage after one that ran again needs no push: what it reads changed, so its key did.
        forced = f"--start-at {stages[start].name}" if start is not None and index >= start else None
        outcomes.append(pipeline.run(stage, index + 1, forced=forced, keep=start is not None and index < start))
    total = time.monotonic() - pipeline.started
    report = write_report(work, outcomes, total)
    print(
        f"\nquickstart finished in {total:.0f}s: "
        f"{sum(o.status == 'ran' for o in outcomes)} stage(s) ran, {sum(o.status == 'skipped' for o in outcomes)} skipped"
    )
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
