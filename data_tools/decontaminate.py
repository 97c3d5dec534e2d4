"""Remove training items that resemble HumanEval / MBPP problems, and report how close each problem's
nearest training items are (phi-1 paper, section 5 and Table 3).

Three signals, as in the paper:
- n-gram overlap, on every input: a training item sharing any word 13-gram with a benchmark problem
  (its prompt and reference solution) is removed;
- embedding distance, on the ``--deep-input`` datasets only: the L2 distance between L2-normalised
  embeddings (``data_tools.embed``; MiniLM by default, or a code model's mean-pooled hidden states).
  Each such item is compared by AST with its ``--top-k`` nearest problems, and the report lists each
  problem's ``--top-k`` nearest items;
- AST match rate, on the ``--deep-input`` datasets: the similarity of the problem's AST node-type
  sequence to the item's, whole or any one function of it (difflib's ratio on pre-order node-type
  sequences; names, constants, docstrings, annotations and imports ignored). An item at or above
  ``--ast-threshold`` with one of its nearest problems is removed. Problems whose AST has fewer than
  ``--min-ast-nodes`` nodes (one-liners such as ``return len(string)``) are judged by n-grams alone:
  their shape occurs in most code, so an AST match there says nothing.

Which dataset gets which checks: ``--input`` datasets get the 13-gram check alone (cheap enough for
the whole corpus); ``--deep-input`` datasets get all three (the paper ran the embedding and AST
analysis on its synthetic exercises; on a CPU the embedding pass is the cost, ~10 items/s per core,
hence ``--device auto``: fp16 on the task's GPU where it has one). In a recipe YAML the same split is
``input: [...]`` and ``deep_input: [...]``. Every decision is made per item (an item's own nearest
problems, not each problem's nearest items across the corpus), so the kept items do not depend on how
the input is split into tasks.

The run is a datatrove stage of ``--tasks`` tasks (``data_tools.executors``), each loading the
benchmark problems once (the filter step: :mod:`data_tools.decontamination_filter`), then a one-task
report stage (:mod:`data_tools.decontamination_report`). Outputs:
- ``PREFIX-RRRRR-NNNNN.jsonl``: the kept records of task RRRRR, unchanged;
- ``PREFIX.removed.jsonl``: one line per removed item: id, reason, benchmark, task_id;
- ``PREFIX.decontamination.json`` and ``.md``: removed counts per benchmark and check, a per-task view,
  and per problem its closest training items with both scores and, for every tau in ``--report-taus``
  (the paper's 0.95, 0.9, 0.85, 0.8), whether it has a training item with an AST match rate >= tau:
  the split into "similar" and "non-similar" problems of the paper's Table 3.

    python -m data_tools.decontaminate --input data/dedup-*.jsonl --deep-input data/exercises-*.jsonl \\
        --output-prefix data/clean --benchmarks humaneval mbpp --mbpp-path mbpp.jsonl --tasks 8
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep

from data_tools.contamination import BENCHMARKS, DecontaminationError, load_benchmark_items, word_ngrams
from data_tools.decontamination_filter import DecontaminationFilter, DeepInputReader
from data_tools.decontamination_report import DecontaminationReport, report_tables
from data_tools.embed import DEVICES, add_device_argument
from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, parse_stage_flags, run_stages
from data_tools.jsonl import ON_ERROR_CHOICES, OnError, check_on_error
from data_tools.steps import RecordReader, RecordWriter
from megaphi.common.cli import entry_point

# What other parts import from here: the benchmark problems and n-grams the checks use.
__all__ = [
    "DecontaminateConfig",
    "DecontaminationError",
    "load_benchmark_items",
    "main",
    "run",
    "stages",
    "word_ngrams",
]

PAPER_TAUS = (0.95, 0.9, 0.85, 0.8)


@dataclass
class DecontaminateConfig:
    """The options of ``python -m data_tools.decontaminate`` (flag ``--foo-bar`` is field ``foo_bar``)."""

    input: list[str] = field(default_factory=list)  # checked by 13-gram overlap
    output_prefix: str = ""
    deep_input: list[str] = field(default_factory=list)  # checked by 13-gram overlap, embedding and AST
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    mbpp_path: str | None = None  # MBPP's mbpp.jsonl; None: the Hugging Face hub
    problems: list[str] = field(default_factory=list)  # only these task ids; empty: every problem
    text_key: str = "text"
    ngram: int = 13
    top_k: int = 10
    ast_threshold: float = 0.95
    min_ast_nodes: int = 20
    report_taus: list[float] = field(default_factory=lambda: list(PAPER_TAUS))
    embedder: str = "minilm"
    device: str = "auto"  # where --deep-input items are embedded: auto, cpu or cuda (data_tools.embed)
    on_error: OnError = "stop"

    def validate(self) -> None:
        if not self.input and not self.deep_input:
            raise DecontaminationError("no inputs: give --input (13-gram check) and/or --deep-input (all checks)")
        both = sorted(set(self.input) & set(self.deep_input))
        if both:
            raise DecontaminationError(f"{both[0]} is in both --input and --deep-input: name each input once")
        if not self.output_prefix:
            raise DecontaminationError("no --output-prefix: kept shards go to PREFIX-RRRRR-NNNNN.jsonl")
        if not self.benchmarks:
            raise DecontaminationError("no --benchmarks: choose humaneval and/or mbpp")
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise DecontaminationError(f"unknown benchmark {unknown[0]!r}: choose humaneval and/or mbpp")
        if self.ngram < 1:
            raise DecontaminationError(f"--ngram must be at least 1, got {self.ngram}")
        if self.top_k < 1:
            raise DecontaminationError(f"--top-k must be at least 1, got {self.top_k}")
        for tau in (self.ast_threshold, *self.report_taus):
            if not 0.0 < tau <= 1.0:
                raise DecontaminationError(f"AST match thresholds must be in (0, 1], got {tau}")
        if self.device not in DEVICES:
            raise DecontaminationError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        check_on_error(self.on_error)

    @property
    def ngram_reason(self) -> str:
        return f"{self.ngram}-gram overlap"


def stages(config: DecontaminateConfig, options: ExecutorOptions) -> list[Stage]:
    """The filter stage (``options.tasks`` tasks) and the one-task report stage."""
    config.validate()
    readers: list[PipelineStep] = []
    if config.input:
        readers.append(RecordReader(config.input, text_key=config.text_key, on_error=config.on_error))
    if config.deep_input:
        readers.append(DeepInputReader(config.deep_input, text_key=config.text_key, on_error=config.on_error))
    settings = asdict(config)  # a rerun with other inputs or options must not take the earlier tasks as done
    return [
        Stage(
            "decontaminate",
            [
                *readers,
                DecontaminationFilter(config),
                RecordWriter(config.output_prefix, text_key=config.text_key),
            ],
            logging_dir_for(config.output_prefix, "decontaminate"),
            settings=settings,
        ),
        Stage(
            "decontaminate-report",
            [DecontaminationReport(config, options.tasks)],
            logging_dir_for(config.output_prefix, "decontaminate-report"),
            tasks=1,
            settings=settings,
        ),
    ]


def run(config: DecontaminateConfig, options: ExecutorOptions) -> dict[str, Any] | None:
    """Run the stages; locally, return the report (on a cluster they are only submitted)."""
    run_stages(stages(config, options), options)
    if options.executor == "slurm":
        return None
    return json.loads(Path(f"{config.output_prefix}.decontamination.json").read_text())


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.decontaminate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = DecontaminateConfig()
    parser.add_argument(
        "--input", nargs="+", default=[], help="JSONL/parquet files, globs or directories: 13-gram check only"
    )
    parser.add_argument(
        "--deep-input",
        nargs="+",
        default=[],
        help="inputs also checked by embedding distance and AST match (the paper's exercises); default: none",
    )
    parser.add_argument("--output-prefix", required=True, help="kept shards go to PREFIX-RRRRR-NNNNN.jsonl")
    parser.add_argument("--benchmarks", nargs="+", default=defaults.benchmarks, choices=BENCHMARKS)
    parser.add_argument("--mbpp-path", help="MBPP's mbpp.jsonl (without it MBPP comes from the Hugging Face hub)")
    parser.add_argument(
        "--problems", nargs="+", default=[], help="only these task ids, e.g. HumanEval/0 Mbpp/11 (default: all)"
    )
    parser.add_argument("--text-key", default=defaults.text_key)
    parser.add_argument("--ngram", type=int, default=defaults.ngram, help="words per n-gram for the overlap test")
    parser.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        help="nearest problems by embedding an item is AST-compared with, and items listed per problem (default: 10)",
    )
    parser.add_argument(
        "--ast-threshold", type=float, default=defaults.ast_threshold, help="AST match rate at which an item is removed"
    )
    parser.add_argument(
        "--min-ast-nodes",
        type=int,
        default=defaults.min_ast_nodes,
        help="problems with a smaller AST are judged by n-gram overlap alone",
    )
    parser.add_argument("--report-taus", type=float, nargs="+", default=defaults.report_taus)
    parser.add_argument("--embedder", default=defaults.embedder, help="'minilm' or a megaphi/HF model directory")
    add_device_argument(parser)
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default=defaults.on_error)
    config, options = parse_stage_flags(parser, DecontaminateConfig, argv)
    config.validate()
    if "mbpp" in config.benchmarks and config.mbpp_path is None:
        print("note: no --mbpp-path: loading MBPP from the Hugging Face hub", file=sys.stderr)
    report = run(config, options)
    if report is None:
        print(f"submitted decontamination of {config.output_prefix} to Slurm")
    else:
        print(report_tables(report, config.ngram_reason), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
