"""python -m data_tools.quality annotate|train|filter: the educational-value filter of phi-1.

  annotate  label corpus files high/medium/low with an LLM through any OpenAI-compatible endpoint
            (--annotator llm, the paper's method) or with the offline stand-in heuristic
            (--annotator heuristic: docstring/comment density, function size, no generated code or
            data tables; a proxy for tests and network-less runs, not a judge of quality)
  train     embed the annotated files and fit a random forest; prints held-out precision/recall/F1
  filter    score a whole corpus and keep the files at or above the threshold, split into --tasks
            tasks on the local machine, a Slurm cluster or Ray (--executor); the report is
            PREFIX.quality.json and .png

Example, offline on the standard library:
  python -m data_tools.corpus --output-prefix data/stdlib
  python -m data_tools.quality annotate --annotator heuristic --input data/stdlib-*.jsonl --out data/ann.jsonl
  python -m data_tools.quality train --input data/stdlib-*.jsonl --annotations data/ann.jsonl --out runs/quality
  python -m data_tools.quality filter --input data/stdlib-*.jsonl --classifier runs/quality --output-prefix data/edu

On a Slurm cluster with a GPU per task (embeddings in fp16 there):
  python -m data_tools.quality filter --input 'data/stack-*.jsonl' --classifier runs/quality \
      --output-prefix data/edu --executor slurm --tasks 64 --slurm-partition gpu --slurm-gpus-per-task 1
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from data_tools.embed import add_device_argument
from data_tools.executors import add_executor_arguments, executor_options_from_args, fields_from_args
from data_tools.jsonl import ON_ERROR_CHOICES
from data_tools.quality.annotate import ANNOTATORS, DEFAULT_MAX_CHARS, DEFAULT_PROMPT, AnnotateOptions
from data_tools.quality.classifier import DEFAULT_EMBED_MAX_CHARS, TrainOptions
from data_tools.quality.labels import parse_levels
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError


def _add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        "--corpus",
        dest="corpus",
        nargs="+",
        required=True,
        help="JSONL shards from data_tools.corpus (paths, globs or directories)",
    )
    parser.add_argument("--text-key", default="text", help="record field holding the file's text (default: text)")
    parser.add_argument(
        "--on-error", choices=ON_ERROR_CHOICES, default="stop", help="malformed corpus lines: stop (default) or skip"
    )


def build_parser() -> argparse.ArgumentParser:
    from data_tools.llm import add_client_arguments

    parser = argparse.ArgumentParser(
        prog="python -m data_tools.quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    annotate = commands.add_parser("annotate", help="label files with their educational value")
    _add_corpus_arguments(annotate)
    annotate.add_argument("--out", required=True, help="annotation JSONL (failures go to OUT.failures.jsonl)")
    annotate.add_argument(
        "--annotator",
        choices=ANNOTATORS,
        default="llm",
        help="llm: ask the endpoint (default); heuristic: offline stand-in heuristic-v1",
    )
    annotate.add_argument("--prompt", default=str(DEFAULT_PROMPT), help="prompt file with {code} (and {path})")
    annotate.add_argument("--limit", type=int, help="annotate a random sample of this many files (default: all)")
    annotate.add_argument("--seed", type=int, default=0, help="seed of the sample")
    annotate.add_argument(
        "--max-chars",
        type=int,
        default=DEFAULT_MAX_CHARS,
        help=f"characters of each file shown to the LLM (default: {DEFAULT_MAX_CHARS})",
    )
    annotate.add_argument("--answer-max-tokens", type=int, default=256, help="max tokens of each answer")
    annotate.add_argument("--retry-failed", action="store_true", help="ask again for ids in the failure log")
    annotate.add_argument("--no-progress", action="store_true")
    add_client_arguments(annotate)

    train = commands.add_parser("train", help="fit the random forest on embeddings of annotated files")
    _add_corpus_arguments(train)
    train.add_argument("--annotations", nargs="+", required=True, help="annotation JSONL file(s)")
    train.add_argument("--out", required=True, help="directory for classifier.joblib and classifier.json")
    train.add_argument(
        "--embedder",
        default="minilm",
        help="'minilm' (default, offline) or a megaphi checkpoint / Hugging Face model directory",
    )
    train.add_argument(
        "--positive-labels", default="high", help="labels counted as educational, comma-separated (default: high)"
    )
    train.add_argument("--test-fraction", type=float, default=0.2, help="held-out share (default: 0.2)")
    train.add_argument("--n-estimators", type=int, default=200)
    train.add_argument("--max-depth", type=int)
    train.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="keep files whose positive-class probability is at least this (default: 0.5)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--embed-max-chars",
        type=int,
        default=DEFAULT_EMBED_MAX_CHARS,
        help="cut files to this many characters before embedding; the embedder then reads its own "
        "window (MiniLM: first 256 word pieces; a causal LM: first 512 tokens)",
    )
    add_device_argument(train)

    filt = commands.add_parser("filter", help="score a corpus and keep the educational files")
    _add_corpus_arguments(filt)
    filt.add_argument("--classifier", required=True, help="directory written by `train`")
    filt.add_argument(
        "--output-prefix",
        required=True,
        help="kept shards PREFIX-TTTTT-NNNNN.jsonl (TTTTT: the task), report PREFIX.quality.json and .png",
    )
    filt.add_argument("--threshold", type=float, help="override the classifier's threshold")
    filt.add_argument(
        "--batch-size", type=int, default=64, help="documents embedded per batch, across files (default: 64)"
    )
    add_device_argument(filt)
    filt.add_argument(
        "--removed-prefix",
        default="",
        help="also write the removed records, with quality_score and filter_reason, to PREFIX-TTTTT-NNNNN.jsonl",
    )
    # Each task loads the embedder once (a few seconds): a task per few thousand files or more.
    add_executor_arguments(filt)
    return parser


def run(args: argparse.Namespace) -> str:
    if args.command == "annotate":
        annotate_options = fields_from_args(AnnotateOptions, args)
        if args.annotator == "heuristic":
            from data_tools.quality.annotate import annotate_with_heuristic

            stats = annotate_with_heuristic(args.corpus, args.out, options=annotate_options)
        else:
            from data_tools.llm import client_config_from_args
            from data_tools.quality.annotate import annotate_with_llm

            stats = annotate_with_llm(
                args.corpus,
                args.out,
                client_config_from_args(args),
                prompt_path=args.prompt,
                options=annotate_options,
                retry_failed=args.retry_failed,
                progress=not args.no_progress,
                max_tokens=args.answer_max_tokens,
            )
        if stats.failed and not stats.succeeded and not stats.rejected:
            raise UserError(
                f"every annotation request failed (reasons in {args.out}'s failure log); check the "
                "endpoint, model and key"
            )
        return (
            f"{stats.requested} files: {stats.succeeded} annotated, {stats.failed} failed, "
            f"{stats.already_done} done before, {stats.failed_before} failed before (--retry-failed asks again); "
            f"annotations in {args.out}"
        )
    if args.command == "train":
        from data_tools.quality.classifier import train_classifier

        train_options = fields_from_args(TrainOptions, args, positive_labels=parse_levels(args.positive_labels))
        return train_classifier(args.corpus, args.annotations, args.out, train_options).summary()
    from data_tools.quality.filter import QualityFilterConfig, filter_corpus

    options = executor_options_from_args(args)
    report = filter_corpus(fields_from_args(QualityFilterConfig, args, input=args.corpus), options)
    if report is None:
        return f"submitted the quality filter ({options.tasks} tasks) and its report to {options.executor}"
    return report.summary()


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(run(args))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the progress
    sys.exit(main())
