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

(Over 400 lines on purpose: it is the recipe's walk-through, every stage's commands in the order
they run, read top to bottom; the machinery that runs them is launch/pipeline.py.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from megaphi.common.checkpoints import read_latest
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.common.jsonl import read_jsonl
from megaphi.common.net import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from launch.pipeline import Outcome, Pipeline, Stage, write_json_atomically  # noqa: E402

PY = sys.executable
EXERCISES = ROOT / "launch" / "quickstart_exercises.jsonl"
TOY_NOTE = """\
What a toy model can and cannot show: phi-tiny (2 layers, hidden size 128) trained for minutes on a
slice of the standard library cannot write a HumanEval solution; HumanEval pass@1 of 0 is the expected
result, and the completions show what the model learned (the shape of Python code, not its meaning).
It does learn the ten seed exercises it was finetuned on: the exercise evaluation asks for exactly
those, so passing them shows that finetuning, conversion, generation and the sandboxed scoring fit
together and that a trained model's answers are scored as passed, not that the model can program.
The synthetic textbooks and exercises come from the same toy model, so they are noise: the textbooks
are tokenized (the prefix the full recipe mixes into pretraining) but the toy does not pretrain again,
and few or no synthetic exercises pass validation. With a real endpoint (--base-url of a large
model) the same stages produce the phi-1 data."""


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


def jsonl_lines(*paths: Path) -> int:
    return sum(sum(1 for line in p.open(encoding="utf-8") if line.strip()) for p in paths if p.is_file())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def latest_checkpoint(run_dir: Path) -> Path:
    """The run's newest checkpoint, or its checkpoint root while it has none (a stage key still names it)."""
    root = run_dir / "checkpoints"
    return root / (read_latest(root) or "")


def token_counts(prefix: Path) -> dict[str, int]:
    from megaphi.data.indexed import IndexedDataset

    if not Path(f"{prefix}.idx").is_file():
        return {}
    dataset = IndexedDataset(prefix)
    return {"documents": len(dataset), "tokens": int(sum(len(dataset[i]) for i in range(len(dataset))))}


def training_counts(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    steps = [r for r in read_jsonl(path) if "loss" in r and "step" in r]
    if not steps:
        return {}
    return {
        "steps": steps[-1]["step"],
        "first loss": round(steps[0]["loss"], 3),
        "last loss": round(steps[-1]["loss"], 3),
        "samples": steps[-1].get("consumed_samples"),
    }


def diversity_counts(path: Path) -> dict[str, Any]:
    """The synthetic data's diversity in the stage row: near-duplicate rate and embedding clusters."""
    report = read_json(path)
    if not report:
        return {}
    duplicates, embedding = report["near_duplicates"], report.get("embedding") or {}
    return {
        "synthetic records": report["records"],
        "near-duplicate rate": f"{duplicates['rate']:.1%}",
        "embedding clusters": embedding.get("clusters"),
    }


def render_exercises(source: Path, out: Path) -> None:
    """The seed exercises as finetuning documents: the prompt the evaluation shows, then the solution."""
    from megaphi.eval.benchmarks import mbpp_prompt

    with out.open("w", encoding="utf-8") as f:
        for row in read_jsonl(source):
            text = mbpp_prompt(row["text"], row["test_list"][0]) + row["code"] + "\n"
            f.write(json.dumps({"text": text, "id": f"seed-exercise-{row['task_id']}"}) + "\n")


# ------------------------------------------------------------------------------------------------
# The recipe


def build_stages(args: argparse.Namespace, work: Path) -> list[Stage]:
    data = work / "data"
    tokenizer = work / "tokenizer"
    pretrain, finetune, hf_dir, evals = work / "pretrain", work / "finetune", work / "hf", work / "eval"
    train = [
        PY,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "megaphi.train",
        "--config",
        "configs/phi_tiny_cpu.yaml",
    ]
    recipe = [ROOT / "configs" / "phi_tiny_cpu.yaml", ROOT / "ds_configs" / "cpu.json"]

    def vocab() -> int:
        from megaphi.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer).vocab_size

    def port_endpoint() -> tuple[int, list[str]]:
        port = getattr(build_stages, "port", None) or free_port()
        build_stages.port = port  # type: ignore[attr-defined]
        return port, ["--base-url", f"http://127.0.0.1:{port}/v1", "--api-key", "local", "--model", "phi-tiny"]

    def synth_commands() -> list[list[str]]:
        _, endpoint = port_endpoint()
        return [
            [
                PY,
                "-m",
                "data_tools.synth",
                kind,
                "--count",
                str(args.synth_count),
                "--out",
                str(data / f"{kind}.jsonl"),
                "--max-tokens",
                "96",
                "--api",
                "completion",
                "--keep-truncated",
                "--no-progress",
                *endpoint,
            ]
            for kind in ("textbooks", "exercises")
        ]

    quality = data / "filtered.quality.json"
    return [
        Stage(
            "corpus",
            "gather code: the standard library of this Python into JSONL shards",
            # A slice of the library keeps the toy run to minutes: no tests, files of 400 B to 20 kB.
            lambda: [
                [
                    PY,
                    "-m",
                    "data_tools.corpus",
                    "--output-prefix",
                    str(data / "corpus"),
                    "--include",
                    args.corpus_include,
                    "--exclude",
                    "*/test/*",
                    "*/tests/*",
                    "*/idle_test/*",
                    "*/site-packages/*",
                    "*/__pycache__/*",
                    "--min-bytes",
                    "400",
                    "--max-bytes",
                    "20000",
                    "--no-progress",
                ]
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
                [
                    PY,
                    "-m",
                    "data_tools.quality",
                    "annotate",
                    "--input",
                    *map(str, shards(data, "corpus")),
                    "--annotator",
                    "heuristic",
                    "--out",
                    str(data / "annotations.jsonl"),
                    "--no-progress",
                ],
                [
                    PY,
                    "-m",
                    "data_tools.quality",
                    "train",
                    "--input",
                    *map(str, shards(data, "corpus")),
                    "--annotations",
                    str(data / "annotations.jsonl"),
                    "--out",
                    str(work / "quality_classifier"),
                ],
                [
                    PY,
                    "-m",
                    "data_tools.quality",
                    "filter",
                    "--input",
                    *map(str, shards(data, "corpus")),
                    "--classifier",
                    str(work / "quality_classifier"),
                    "--output-prefix",
                    str(data / "filtered"),
                ],
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
                f"removed (quality score below {read_json(quality).get('threshold')})": read_json(quality).get(
                    "removed"
                ),
            },
        ),
        Stage(
            "dedup",
            "deduplicate: exact and MinHash near duplicates",
            lambda: [
                [
                    PY,
                    "-m",
                    "data_tools.dedup",
                    "--input",
                    *map(str, shards(data, "filtered")),
                    "--output-prefix",
                    str(data / "dedup"),
                ]
            ],
            lambda: shards(data, "filtered"),
            # the work directory too: its completion markers would make a rerun skip every task
            [
                data / "dedup-00000-00000.jsonl",
                data / "dedup.removed.jsonl",
                data / "dedup.dedup.json",
                data / "dedup.datatrove",
            ],
            lambda: {
                k: read_json(data / "dedup.dedup.json").get(k)
                for k in ("documents", "kept", "exact_duplicates", "near_duplicates")
            },
        ),
        Stage(
            "decontaminate",
            "decontaminate the code against HumanEval (13-gram overlap)",
            lambda: [
                [
                    PY,
                    "-m",
                    "data_tools.decontaminate",
                    "--input",
                    *map(str, shards(data, "dedup")),
                    "--output-prefix",
                    str(data / "clean"),
                    "--benchmarks",
                    "humaneval",
                ]
            ],
            lambda: shards(data, "dedup"),
            [
                data / "clean-00000-00000.jsonl",
                *(data / f"clean{suffix}" for suffix in DECONTAMINATION_SIDE_OUTPUTS),
            ],
            lambda: {
                k: read_json(data / "clean.decontamination.json").get(k)
                for k in ("documents", "kept", "removed_ngram", "removed_ast")
            },
        ),
        Stage(
            "tokenizer",
            "train a byte-level BPE tokenizer like codegen-350M-mono's (toy vocabulary)",
            lambda: [
                [
                    PY,
                    "-m",
                    "data_tools.tokenizer",
                    "train",
                    "--input",
                    *map(str, shards(data, "clean")),
                    "--output",
                    str(tokenizer),
                    "--vocab-size",
                    str(args.vocab_size),
                ]
            ],
            lambda: shards(data, "clean"),
            [tokenizer],
            lambda: {"vocab size (with added tokens)": vocab()},
        ),
        Stage(
            "tokenize",
            "tokenize into Megatron-compatible .bin/.idx",
            lambda: [
                [
                    PY,
                    "-m",
                    "data_tools.preprocess",
                    "--input",
                    *map(str, shards(data, "clean")),
                    "--output-prefix",
                    str(data / "code"),
                    "--tokenizer",
                    str(tokenizer),
                    "--append-eod",
                    "--no-progress",
                ]
            ],
            lambda: [*shards(data, "clean"), tokenizer],
            # the task markers too: a rerun over changed inputs must not find its tasks already done
            [data / "code_text_document.bin", data / "code_text_document.idx", data / "code.datatrove"],
            lambda: token_counts(data / "code_text_document"),
        ),
        Stage(
            "pretrain",
            f"pretrain phi-tiny: DeepSpeed ZeRO-2, {args.nproc} CPU processes (torchrun)",
            lambda: [
                [
                    *train,
                    f"run_dir={pretrain}",
                    f"model.overrides.vocab_size={vocab()}",
                    f"data.paths=[{data / 'code_text_document'}]",
                    f"data.tokenizer={tokenizer}",
                    f"train.steps={args.train_steps}",
                    "checkpoint.interval=20",
                    "eval.interval=20",
                    "logging.interval=10",
                ]
            ],
            lambda: [data / "code_text_document.bin", data / "code_text_document.idx", tokenizer, *recipe],
            [pretrain],
            lambda: training_counts(pretrain),
        ),
        Stage(
            "synth",
            "synthesize textbooks and exercises through an OpenAI-compatible server over the toy model",
            synth_commands,
            lambda: [latest_checkpoint(pretrain)],
            # the merged files, and the per-task files and logs a rerun would otherwise resume from
            [
                data / f"{kind}{suffix}"
                for kind in ("textbooks", "exercises")
                for suffix in (".jsonl", ".failures.jsonl", ".summary.json", ".tasks", ".datatrove")
            ],
            lambda: {
                "textbooks": jsonl_lines(data / "textbooks.jsonl"),
                "exercises that passed validation": jsonl_lines(data / "exercises.jsonl"),
                "failed or rejected requests": jsonl_lines(
                    data / "textbooks.failures.jsonl", data / "exercises.failures.jsonl"
                ),
            },
            around=lambda: served(latest_checkpoint(pretrain), port_endpoint()[0]),
            unkeyed=lambda: [port_endpoint()[1][1]],
        ),  # the server's address changes from run to run
        Stage(
            "synthetic-data",
            "tokenize the synthetic textbooks; decontaminate and tokenize the exercises",
            lambda: [
                [
                    PY,
                    "-m",
                    "data_tools.preprocess",
                    "--input",
                    str(data / "textbooks.jsonl"),
                    "--output-prefix",
                    str(data / "synthetic_textbooks"),
                    "--tokenizer",
                    str(tokenizer),
                    "--append-eod",
                    "--no-progress",
                ],
                # how diverse the synthetic data is (issue of the paper's scale: see data_tools.synth_report)
                [
                    PY,
                    "-m",
                    "data_tools.synth",
                    "report",
                    "--input",
                    str(data / "textbooks.jsonl"),
                    *([str(data / "exercises.jsonl")] if jsonl_lines(data / "exercises.jsonl") else []),
                    "--out-dir",
                    str(data / "diversity"),
                    "--no-progress",
                ],
                [
                    PY,
                    str(ROOT / "launch" / "quickstart.py"),
                    "--render-exercises",
                    str(EXERCISES),
                    str(data / "seed_exercises.jsonl"),
                ],
                [
                    PY,
                    "-m",
                    "data_tools.decontaminate",
                    # the exercises get the embedding and AST checks too, as in the paper
                    "--deep-input",
                    str(data / "seed_exercises.jsonl"),
                    *([str(data / "exercises.jsonl")] if jsonl_lines(data / "exercises.jsonl") else []),
                    "--output-prefix",
                    str(data / "code_exercises"),
                    "--benchmarks",
                    "humaneval",
                ],
                # a glob: these shards are written by the command before, after this list is built
                [
                    PY,
                    "-m",
                    "data_tools.preprocess",
                    "--input",
                    str(data / "code_exercises-*.jsonl"),
                    "--output-prefix",
                    str(data / "code_exercises"),
                    "--tokenizer",
                    str(tokenizer),
                    "--append-eod",
                    "--no-progress",
                ],
            ],
            lambda: [data / "textbooks.jsonl", data / "exercises.jsonl", EXERCISES, tokenizer],
            [
                data / "synthetic_textbooks_text_document.bin",
                data / "synthetic_textbooks_text_document.idx",
                *(data / "diversity" / name for name in ("diversity.json", "diversity.md", "diversity.png")),
                data / "seed_exercises.jsonl",
                *(
                    data / f"code_exercises{suffix}"
                    for suffix in (
                        "-00000-00000.jsonl",
                        *DECONTAMINATION_SIDE_OUTPUTS,
                        "_text_document.bin",
                        "_text_document.idx",
                    )
                ),
            ],
            lambda: {
                "textbook tokens": token_counts(data / "synthetic_textbooks_text_document").get("tokens"),
                **diversity_counts(data / "diversity" / "diversity.json"),
                "exercises kept": read_json(data / "code_exercises.decontamination.json").get("kept"),
                "exercises removed as contaminated": sum(
                    read_json(data / "code_exercises.decontamination.json").get(k, 0)
                    for k in ("removed_ngram", "removed_ast")
                ),
                "exercise tokens": token_counts(data / "code_exercises_text_document").get("tokens"),
            },
        ),
        Stage(
            "finetune",
            "finetune from the pretrained checkpoint on the exercises (phi-1's CodeExercises stage)",
            lambda: [
                [
                    *train,
                    f"run_dir={finetune}",
                    f"data.paths=[{data / 'code_exercises_text_document'}]",
                    f"data.tokenizer={tokenizer}",
                    f"checkpoint.init_from={latest_checkpoint(pretrain)}",
                    # A constant, high rate: the toy model has to learn ten exercises by heart in a minute.
                    f"train.steps={args.finetune_steps}",
                    "optim.lr=3e-3",
                    "optim.decay=constant",
                    "optim.warmup_steps=2",
                    "data.split=100,0,0",
                    "checkpoint.interval=20",
                    "eval.interval=0",
                    "logging.interval=5",
                ]
            ],
            lambda: [
                data / "code_exercises_text_document.bin",
                data / "code_exercises_text_document.idx",
                latest_checkpoint(pretrain),
                tokenizer,
                *recipe,
            ],
            [finetune],
            lambda: training_counts(finetune),
        ),
        Stage(
            "convert",
            "convert the finetuned checkpoint to a Hugging Face PhiForCausalLM directory",
            lambda: [
                [
                    PY,
                    "-m",
                    "megaphi.convert",
                    "to-hf",
                    "--checkpoint",
                    str(finetune / "checkpoints"),
                    "--out",
                    str(hf_dir),
                ]
            ],
            lambda: [latest_checkpoint(finetune)],
            [hf_dir],
        ),
        Stage(
            "eval",
            "evaluate: HumanEval and the seed exercises, generated, scored in the bubblewrap sandbox",
            lambda: [
                [
                    PY,
                    "-m",
                    "megaphi.eval",
                    "run",
                    "--model",
                    str(hf_dir),
                    "--benchmark",
                    "humaneval",
                    "--limit",
                    str(args.eval_problems),
                    "--max-new-tokens",
                    "64",
                    "--out-dir",
                    str(evals / "humaneval"),
                ],
                [
                    PY,
                    "-m",
                    "megaphi.eval",
                    "run",
                    "--model",
                    str(hf_dir),
                    "--benchmark",
                    "mbpp",
                    "--mbpp-path",
                    str(EXERCISES),
                    "--mbpp-split",
                    "prompt",
                    "--max-new-tokens",
                    "64",
                    "--out-dir",
                    str(evals / "exercises"),
                ],
            ],
            lambda: [hf_dir, EXERCISES],
            [evals],
            lambda: {
                f"{name} pass@1": read_json(evals / name / "report.json").get("summary", {}).get("pass@1")
                for name in ("humaneval", "exercises")
            },
        ),
    ]


# ------------------------------------------------------------------------------------------------
# The report


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_report(work: Path, outcomes: list[Outcome], total_s: float) -> Path:
    evals = {name: read_json(work / "eval" / name / "report.json") for name in ("humaneval", "exercises")}
    rows = [
        {
            "stage": o.stage.name,
            "title": o.stage.title,
            "status": o.status,
            "reason": o.reason,
            "seconds": round(o.seconds, 1),
            "inputs": o.inputs,
            "outputs": [str(p.relative_to(work)) for p in o.stage.outputs],
            "counts": o.counts,
            "said": [line for line in o.said if line],
        }
        for o in outcomes
    ]
    images = {
        "pretraining loss": "pretrain/loss_curve.png",
        "finetuning loss": "finetune/loss_curve.png",
        "quality scores": "data/filtered.quality.png",
        "synthetic data diversity (details: data/diversity/diversity.md)": "data/diversity/diversity.png",
    }
    payload = {
        "work_dir": str(work),
        "seconds": round(total_s, 1),
        "stages": rows,
        "images": {k: v for k, v in images.items() if (work / v).is_file()},
        "evaluation": {name: report.get("summary") for name, report in evals.items()},
        "toy_model_note": TOY_NOTE,
    }
    write_json_atomically(work / "report.json", payload)

    ran = sum(o.status == "ran" for o in outcomes)
    lines = [
        "# Quickstart report",
        "",
        f"Work directory `{work}`; this run took {total_s:.0f}s: {ran} stage(s) ran, "
        f"{len(outcomes) - ran} skipped (outputs complete, inputs and parameters unchanged). "
        "The same content as JSON: `report.json`.",
        "",
        "| # | stage | this run | time (s) | counts | the stage said |",
        "|---:|---|---|---:|---|---|",
    ]
    for number, row in enumerate(rows, 1):
        counts = "; ".join(f"{k}: {v}" for k, v in row["counts"].items() if v is not None)
        status = "ran" if row["status"] == "ran" else "skipped"
        lines.append(
            f"| {number} | {row['stage']} | {status} ({_cell(row['reason'])}) | {row['seconds']:.0f} "
            f"| {_cell(counts)} | {_cell(' / '.join(row['said']))} |"
        )
    lines += ["", "## Evaluation", ""]
    if not any(report.get("summary") for report in evals.values()):
        lines.append("(the eval stage has not run)")
    for name, report in evals.items():
        summary = report.get("summary")
        if not summary:
            continue
        passk = ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary.items() if k.startswith("pass@"))
        lines.append(
            f"- **{name}**: {passk} over {summary['problems_scored']} problems "
            f"({summary['samples']} samples); outcomes {summary['outcomes']}; per problem: "
            f"`eval/{name}/report.md`"
        )
    lines += ["", TOY_NOTE, ""]
    for title, path in payload["images"].items():
        lines += [f"## {title[0].upper()}{title[1:]}", "", f"![{title}]({path})", ""]
    lines += ["## Where everything is", "", "| stage | inputs | outputs |", "|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['stage']} | {_cell(', '.join(row['inputs']) or '(none)')} | {_cell(', '.join(row['outputs']))} |"
        )
    lines += ["", "Each stage's record (its commands, key, output fingerprints): `stages/<stage>.json`.", ""]
    path = work / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


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
