"""The whole data recipe from one YAML file: corpus -> quality filter -> dedup -> decontaminate -> tokenize.

    python -m data_tools.recipe --config data_tools/recipes/stdlib.yaml
    python -m data_tools.recipe --config data_tools/recipes/stdlib.yaml output_dir=data/run2 \\
        executor.executor=slurm executor.tasks=64 executor.slurm.partition=cpu

The YAML has one section per stage (the fields of each stage command's flags: ``--min-bytes`` is
``corpus.min_bytes``) and an ``executor`` section (the executor flags: ``executor.slurm.partition``);
``section.field=value`` arguments override it, as for the trainer (:mod:`megaphi.config`). The recipe
wires each stage's output into the next one's input under ``output_dir``:

    OUT/corpus-*.jsonl -> OUT/quality-*.jsonl -> OUT/dedup-*.jsonl -> OUT/clean-*.jsonl
      -> OUT/code_text_document.bin/.idx (Megatron's format)

and runs them as dependent stages (:func:`~data_tools.executors.run_stages`): locally one after
the other, on Slurm one job array per stage, each waiting for the one before (``afterok``). A rerun of
the same recipe runs only the tasks that did not finish.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from data_tools import corpus
from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, run_stages
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.config import ConfigError, check_positive, load_config

log = logging.getLogger(__name__)


class RecipeError(UserError):
    """A recipe that cannot run as written."""


@dataclass
class QualitySection:
    """``python -m data_tools.quality filter`` (and, without a classifier, ``annotate`` + ``train`` first)."""

    enabled: bool = True
    # directory written by `python -m data_tools.quality train`; empty: label the corpus with the offline
    # heuristic annotator and train one here (a toy: real recipes train on LLM annotations)
    classifier: str = ""
    threshold: float | None = None  # override the classifier's threshold
    batch_size: int = 64
    text_key: str = "text"
    on_error: str = "stop"


@dataclass
class DedupSection:
    """``python -m data_tools.dedup``: exact and MinHash near duplicates."""

    enabled: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    text_key: str = "text"
    on_error: str = "stop"


@dataclass
class DecontaminateSection:
    """``python -m data_tools.decontaminate`` against HumanEval and MBPP."""

    enabled: bool = True
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval", "mbpp"])
    mbpp_path: str | None = None  # MBPP's mbpp.jsonl; without it MBPP comes from the Hugging Face hub
    ngram: int = 13
    top_k: int = 10
    ast_threshold: float = 0.95
    min_ast_nodes: int = 20
    embedder: str = "minilm"
    text_key: str = "text"
    on_error: str = "stop"


@dataclass
class TokenizeSection:
    """``python -m data_tools.preprocess`` into Megatron ``.bin/.idx``."""

    # Hugging Face tokenizer directory or sentencepiece model; empty: train a byte-level BPE of
    # `vocab_size` on the recipe's own decontaminated data first (python -m data_tools.tokenizer train)
    tokenizer: str = ""
    vocab_size: int = 50257
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    append_eod: bool = True
    chunk_bytes: int = 1 << 20
    on_error: str = "stop"

    def check(self, prefix: str) -> None:
        check_positive(prefix, self, "vocab_size", "chunk_bytes")


@dataclass
class RecipeConfig:
    output_dir: str = "data/recipe"  # every stage writes under it (see the module's docstring)
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    corpus: corpus.CorpusConfig = field(default_factory=corpus.CorpusConfig)
    quality: QualitySection = field(default_factory=QualitySection)
    dedup: DedupSection = field(default_factory=DedupSection)
    decontaminate: DecontaminateSection = field(default_factory=DecontaminateSection)
    tokenize: TokenizeSection = field(default_factory=TokenizeSection)

    def check(self, prefix: str) -> None:
        if self.corpus.output_prefix:
            raise ConfigError("corpus.output_prefix: set by the recipe (OUTPUT_DIR/corpus); set output_dir instead")
        if not self.output_dir:
            raise ConfigError("output_dir: give the directory every stage writes under")

    def prefix(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    @property
    def dataset(self) -> str:
        """The Megatron dataset the recipe ends with (PREFIX of PREFIX.bin/.idx), one per json key."""
        return f"{self.prefix('code')}_{self.tokenize.json_keys[0]}_document"


class CommandStep(PipelineStep):
    """Runs a data command (``module.main(argv)``) inside a task: the recipe's way to chain a stage that
    is one command. Its output goes to the task's log; a failure raises the command's own error line."""

    name = "command"
    type = "🔧 - COMMAND"

    def __init__(self, module: str, argv: Sequence[str]):
        super().__init__()
        self.module = module
        self.argv = list(argv)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        yield from data or ()
        main = importlib.import_module(self.module).main
        out, err = io.StringIO(), io.StringIO()
        command = f"python -m {self.module.removesuffix('.__main__')}"
        logger.info(f"{command} {' '.join(self.argv)}")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(self.argv)
        logger.info(out.getvalue() + err.getvalue())
        if status != 0:
            lines = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
            message = lines[-1].removeprefix("error: ") if lines else f"exit status {status}"
            raise RecipeError(f"{command}: {message}")


def _command_stage(config: RecipeConfig, name: str, module: str, argv: list[str], writes: str) -> Stage:
    return Stage(name, [CommandStep(module, argv)], logging_dir_for(config.prefix(writes), name), tasks=1)


def _flag(name: str, value: object) -> list[str]:
    return [] if value is None else [f"--{name}", str(value)]


def recipe_stages(config: RecipeConfig) -> list[Stage]:
    """Every stage of the recipe in order, each reading what the one before wrote."""
    corpus_config = corpus.CorpusConfig(**{**vars(config.corpus), "output_prefix": config.prefix("corpus")})
    stages = corpus.stages(corpus_config, config.executor)
    shards = config.prefix("corpus") + "-*.jsonl"

    quality = config.quality
    if quality.enabled:
        classifier = quality.classifier
        common = ["--input", shards, "--text-key", quality.text_key, "--on-error", quality.on_error]
        if not classifier:
            annotations, classifier = config.prefix("quality.annotations.jsonl"), config.prefix("quality.classifier")
            stages.append(
                _command_stage(
                    config,
                    "quality-annotate",
                    "data_tools.quality.__main__",
                    ["annotate", *common, "--annotator", "heuristic", "--out", annotations, "--no-progress"],
                    "quality",
                )
            )
            stages.append(
                _command_stage(
                    config,
                    "quality-train",
                    "data_tools.quality.__main__",
                    ["train", *common, "--annotations", annotations, "--out", classifier],
                    "quality",
                )
            )
        argv = ["filter", *common, "--classifier", classifier, "--output-prefix", config.prefix("quality")]
        argv += ["--batch-size", str(quality.batch_size), *_flag("threshold", quality.threshold)]
        stages.append(_command_stage(config, "quality", "data_tools.quality.__main__", argv, "quality"))
        shards = config.prefix("quality") + "-*.jsonl"

    dedup = config.dedup
    if dedup.enabled:
        argv = ["--input", shards, "--output-prefix", config.prefix("dedup"), "--text-key", dedup.text_key]
        argv += ["--threshold", str(dedup.threshold), "--num-perm", str(dedup.num_perm), "--ngram", str(dedup.ngram)]
        argv += ["--on-error", dedup.on_error, "--no-progress"]
        stages.append(_command_stage(config, "dedup", "data_tools.dedup", argv, "dedup"))
        shards = config.prefix("dedup") + "-*.jsonl"

    decontaminate = config.decontaminate
    if decontaminate.enabled:
        argv = ["--input", shards, "--output-prefix", config.prefix("clean"), "--benchmarks", *decontaminate.benchmarks]
        argv += [*_flag("mbpp-path", decontaminate.mbpp_path), "--text-key", decontaminate.text_key]
        argv += ["--ngram", str(decontaminate.ngram), "--top-k", str(decontaminate.top_k)]
        argv += ["--ast-threshold", str(decontaminate.ast_threshold)]
        argv += ["--min-ast-nodes", str(decontaminate.min_ast_nodes), "--embedder", decontaminate.embedder]
        argv += ["--on-error", decontaminate.on_error]
        stages.append(_command_stage(config, "decontaminate", "data_tools.decontaminate", argv, "clean"))
        shards = config.prefix("clean") + "-*.jsonl"

    tokenize = config.tokenize
    tokenizer = tokenize.tokenizer
    if not tokenizer:
        tokenizer = config.prefix("tokenizer")
        argv = ["train", "--input", shards, "--out", tokenizer, "--vocab-size", str(tokenize.vocab_size)]
        stages.append(_command_stage(config, "tokenizer", "data_tools.tokenizer", argv, "tokenizer"))
    argv = ["--input", shards, "--output-prefix", config.prefix("code"), "--tokenizer", tokenizer]
    argv += ["--json-keys", *tokenize.json_keys, "--chunk-bytes", str(tokenize.chunk_bytes)]
    argv += ["--on-error", tokenize.on_error, "--no-progress", *(["--append-eod"] if tokenize.append_eod else [])]
    stages.append(_command_stage(config, "tokenize", "data_tools.preprocess", argv, "code"))
    return stages


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.recipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the recipe's YAML file (e.g. data_tools/recipes/stdlib.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="changes to the YAML's values")
    args = parser.parse_args(argv)
    config = load_config(RecipeConfig, args.config, args.overrides)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    executors = run_stages(recipe_stages(config), config.executor)
    if config.executor.executor == "slurm" and not config.executor.slurm.wait:
        jobs = ", ".join(str(e.job_id) for e in executors if e.job_id != -1) or "none (every task had finished)"
        print(f"submitted Slurm jobs {jobs}; the dataset will be {config.dataset}.bin/.idx")
        return 0
    print(f"corpus: {corpus.read_report(corpus.CorpusConfig(output_prefix=config.prefix('corpus'))).summary()}")
    print(f"dataset: {config.dataset}.bin/.idx")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Slurm and Ray tasks unpickle the pipeline steps by module: they must be data_tools.recipe's, not __main__'s
    from data_tools.recipe import main as module_main

    sys.exit(module_main())
