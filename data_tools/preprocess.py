"""Tokenize JSONL/parquet records into Megatron-compatible ``.bin/.idx`` datasets, as datatrove stages.

Flags follow Megatron-LM's ``tools/preprocess_data.py`` where they mean the same thing, and so do
the output names: each JSON key becomes ``{output_prefix}_{key}_document.bin/.idx``, one document
(one sequence) per record, ``<|endoftext|>`` appended with ``--append-eod``.

    python -m data_tools.preprocess --input data/code-*.jsonl --output-prefix data/code \\
        --tokenizer tok/ --append-eod --tasks 2
    python -m data_tools.preprocess merge --input data/a_text_document data/b_text_document \\
        --output-prefix data/all_text_document
    python -m data_tools.preprocess stats --input data/megatron_made_text_document

Three stages (see ``data_tools.executors`` for ``--executor``, ``--tasks``, ``--workers`` and Slurm;
their steps are in ``data_tools.preprocess_steps``):
``tokenize`` deals the sorted input files to ``--tasks`` tasks; each task reads its records
(``data_tools.steps.RecordReader``), tokenizes them in batches of about ``--chunk-bytes`` of text with
the tokenizer's batch encoding, and writes one ``.bin/.idx`` part per input file under
``PREFIX.datatrove/tokenize/parts/``. ``merge`` (one task) concatenates the parts in input-file order,
so the final files are byte-identical to megatron-core's ``IndexedDatasetBuilder`` fed the same
documents in the same order, whatever the task count. ``report`` (one task) writes
``PREFIX.preprocess.json``: the counts, in total and per task. A task that finished leaves a
completion marker: rerunning a killed or failed command runs only what is missing (remove
``PREFIX.datatrove`` to start over). The files are split between tasks, not lines: a single input file
is one task (its tokenizer still uses every core through its own threads).

Every dataset written here gets ``{prefix}.stats.json`` next to its ``.bin/.idx`` (the token-id
range, so that the trainer checks ids without reading the tokens); ``stats`` writes it for a
dataset made by another tool (Megatron-LM's own preprocess_data.py; ``merge`` and ``stats`` are in
``data_tools.preprocess_subcommands``). Records with an empty text are
skipped (and counted), as Megatron-LM does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, parse_stage_flags, run_stages
from data_tools.jsonl import ON_ERROR_CHOICES, OnError, expand_inputs
from data_tools.preprocess_steps import MergeParts, TokenizeRecords, WriteReport, report_path, tokenize_dir
from data_tools.preprocess_subcommands import merge_main, stats_main
from data_tools.steps import RecordReader
from data_tools.tokenizer import load_tokenizer
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError


@dataclass
class PreprocessConfig:
    """The options of ``python -m data_tools.preprocess`` (flag ``--foo-bar`` is field ``foo_bar``)."""

    input: list[str]  # JSONL/parquet files, globs or directories
    output_prefix: str  # outputs are {output_prefix}_{key}_document.bin/.idx
    tokenizer: str  # Hugging Face tokenizer directory or sentencepiece model
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    append_eod: bool = False
    chunk_bytes: int = 1 << 20  # text handed to the tokenizer at once
    on_error: OnError = "stop"
    no_progress: bool = False

    def check(self) -> None:
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise UserError(f"--json-keys must name distinct fields, got {list(self.json_keys)}")
        if self.chunk_bytes < 1:
            raise UserError(f"--chunk-bytes must be positive, got {self.chunk_bytes}")
        if self.on_error not in ON_ERROR_CHOICES:
            raise UserError(f"--on-error must be one of {ON_ERROR_CHOICES}, got {self.on_error!r}")


def stages(config: PreprocessConfig, options: ExecutorOptions) -> list[Stage]:
    """tokenize (``--tasks`` tasks) -> merge (1 task) -> report (1 task)."""
    config.check()
    tokenize = tokenize_dir(config.output_prefix)
    reader = RecordReader(
        config.input,
        text_key=config.json_keys[0],
        on_error=config.on_error,
        text_option="--json-keys",
    )
    step = TokenizeRecords(
        reader,
        f"{tokenize}/parts",
        config.tokenizer,
        json_keys=config.json_keys,
        append_eod=config.append_eod,
        batch_bytes=config.chunk_bytes,
        progress=not config.no_progress,
    )
    merge = MergeParts(tokenize, options.tasks, config.output_prefix, config.json_keys, config.input)
    report = WriteReport(config, options.tasks)
    return [
        Stage("tokenize", [step], tokenize),
        Stage("merge", [merge], logging_dir_for(config.output_prefix, "merge"), tasks=1),
        Stage("report", [report], logging_dir_for(config.output_prefix, "report"), tasks=1),
    ]


@dataclass
class PreprocessResult:
    """What one run wrote: an output prefix per JSON key, and what it counted on the way."""

    prefixes: dict[str, str]
    documents: int = 0
    tokens: int = 0
    empty: int = 0
    skipped: int = 0
    seconds: float = 0.0
    tasks: list[dict[str, int]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.documents} documents, {self.tokens} tokens in {self.seconds:.1f}s "
            f"({self.tokens_per_s:,.0f} tokens/s) by {len(self.tasks)} task(s); skipped {self.empty} empty and "
            f"{self.skipped} malformed records; wrote {', '.join(p + '.bin/.idx' for p in self.prefixes.values())}"
        )

    @staticmethod
    def read(output_prefix: str | os.PathLike, seconds: float) -> "PreprocessResult":
        report = json.loads(Path(report_path(output_prefix)).read_text(encoding="utf-8"))
        return PreprocessResult(
            report["datasets"],
            report["documents"],
            report["tokens"],
            report["empty"],
            report["skipped"],
            seconds,
            report["tasks"],
        )


def run_preprocess(config: PreprocessConfig, options: ExecutorOptions) -> PreprocessResult | list[Any]:
    """Run (or submit) the stages; the result when they ran here, else the submitted executors.

    Inputs and tokenizer are checked first, so that a typo is one error line, not a failed job."""
    config.check()
    expand_inputs(config.input)
    load_tokenizer(config.tokenizer)
    start = time.perf_counter()
    executors = run_stages(stages(config, options), options)
    if options.executor == "slurm":
        return executors
    return PreprocessResult.read(config.output_prefix, time.perf_counter() - start)


def preprocess(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    tokenizer: str | os.PathLike,
    *,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    chunk_bytes: int = 1 << 20,
    on_error: OnError = "stop",
    progress: bool = True,
    options: ExecutorOptions | None = None,
) -> PreprocessResult:
    """Tokenize every record of ``inputs`` (JSONL, gzipped JSONL, parquet; paths, globs or
    directories) into one indexed dataset per JSON key, on this machine (``options``: local or Ray;
    default one task). The output is identical for any task count."""
    config = PreprocessConfig(
        [os.fspath(p) for p in inputs],
        os.fspath(output_prefix),
        os.fspath(tokenizer),
        json_keys=list(json_keys),
        append_eod=append_eod,
        chunk_bytes=chunk_bytes,
        on_error=on_error,
        no_progress=not progress,
    )
    options = options or ExecutorOptions()
    if options.executor == "slurm":
        raise UserError("preprocess() waits for its result; submit to Slurm with the command or stages()")
    result = run_preprocess(config, options)
    assert isinstance(result, PreprocessResult)
    return result


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    if argv[:1] == ["stats"]:
        return stats_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.preprocess",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Subcommands: `python -m data_tools.preprocess merge --help` merges datasets; "
        "`... stats --help` records the token statistics of a dataset made "
        "by another tool.",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="JSONL (.jsonl, .json, .jsonl.gz) or parquet files, globs or directories",
    )
    parser.add_argument("--output-prefix", required=True, help="outputs are PREFIX_{key}_document.bin/.idx")
    parser.add_argument(
        "--tokenizer",
        "--tokenizer-model",
        dest="tokenizer",
        required=True,
        help="Hugging Face tokenizer directory or sentencepiece model (see data_tools.tokenizer)",
    )
    parser.add_argument(
        "--json-keys", nargs="+", default=["text"], help="record fields to tokenize, one dataset each (default: text)"
    )
    parser.add_argument("--append-eod", action="store_true", help="append the end-of-document token to every document")
    parser.add_argument(
        "--chunk-bytes", type=int, default=1 << 20, help="text handed to the tokenizer at once (default: 1 MiB)"
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="stop",
        help="malformed JSONL lines or missing fields: stop with the file (default) or skip and count them",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    config, options = parse_stage_flags(parser, PreprocessConfig, argv)
    result = run_preprocess(config, options)
    if isinstance(result, PreprocessResult):
        print(result.summary())
    else:
        print("submitted Slurm jobs " + ", ".join(str(getattr(e, "job_id", "?")) for e in result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
