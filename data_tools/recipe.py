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
import dataclasses
import importlib
import io
import logging
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from data_tools import corpus, decontaminate, dedup, preprocess
from data_tools.preprocess_steps import output_prefix_for
from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, run_stages
from data_tools.quality import filter as quality_filter
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.config import ConfigError, load_config

log = logging.getLogger(__name__)


class RecipeError(UserError):
    """A recipe that cannot run as written."""


def _section(name: str, config: type, wired: Sequence[str], *, optional: bool = True, **extra: Any) -> type:
    """The recipe section of a stage: the fields of its command's config (the command's flags) that the
    recipe does not set itself, ``enabled`` (for a stage that can be left out) and ``extra`` fields
    (name -> (type, default)). Generated, so that each command's config stays the one list of its options."""
    hints = typing.get_type_hints(config)
    fields: list[tuple[str, Any, Any]] = [("enabled", bool, field(default=True))] if optional else []
    for f in dataclasses.fields(config):
        if f.name in wired:
            continue
        if f.default is not dataclasses.MISSING:
            default = field(default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = field(default_factory=f.default_factory)
        else:  # a required flag of the command: empty until the YAML sets it
            default = field(default_factory=typing.get_origin(hints[f.name]) or hints[f.name])
        fields.append((f.name, hints[f.name], default))
    fields += [(key, tp, field(default=value)) for key, (tp, value) in extra.items()]
    cls = dataclasses.make_dataclass(name, fields)
    cls.__module__ = __name__
    cls.__doc__ = f"The options of {config.__name__} that a recipe sets (see its command's flags)."
    return cls


if TYPE_CHECKING:
    # The sections are made when this module is imported, from the stage configs (below): their fields
    # are not known before, so the type checker takes each section as Any.
    CorpusSection = Any
    QualitySection = Any
    DedupSection = Any
    DecontaminateSection = Any
    TokenizeSection = Any
else:
    CorpusSection = _section("CorpusSection", corpus.CorpusConfig, ["output_prefix"], optional=False)
    # classifier empty: label the corpus with the offline heuristic annotator and train one here (a toy:
    # real recipes train on LLM annotations, see data_tools.quality)
    QualitySection = _section("QualitySection", quality_filter.QualityFilterConfig, ["input", "output_prefix"])
    DedupSection = _section("DedupSection", dedup.DedupConfig, ["input", "output_prefix"])
    # deep_input: further datasets that also get the embedding and AST checks (the paper's exercises)
    DecontaminateSection = _section(
        "DecontaminateSection", decontaminate.DecontaminateConfig, ["input", "output_prefix"]
    )
    # tokenizer empty: train a byte-level BPE of vocab_size on the recipe's own clean data first
    TokenizeSection = _section(
        "TokenizeSection",
        preprocess.PreprocessConfig,
        ["input", "output_prefix"],
        optional=False,
        vocab_size=(int, 50257),
    )


@dataclass
class RecipeConfig:
    output_dir: str = "data/recipe"  # every stage writes under it (see the module's docstring)
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    corpus: CorpusSection = field(default_factory=CorpusSection)
    quality: QualitySection = field(default_factory=QualitySection)
    dedup: DedupSection = field(default_factory=DedupSection)
    decontaminate: DecontaminateSection = field(default_factory=DecontaminateSection)
    tokenize: TokenizeSection = field(default_factory=TokenizeSection)

    def check(self, prefix: str) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir: give the directory every stage writes under")
        corpus.CorpusConfig(**vars(self.corpus)).check("corpus")
        if self.tokenize.vocab_size < 1:
            raise ConfigError(f"tokenize.vocab_size: must be > 0, got {self.tokenize.vocab_size}")

    def prefix(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    @property
    def dataset(self) -> str:
        """The Megatron dataset the recipe ends with (PREFIX of PREFIX.bin/.idx), for the first json key."""
        return output_prefix_for(self.prefix("code"), self.tokenize.json_keys[0])


class CommandStep(PipelineStep):
    """Runs a data command (``module.main(argv)``) inside a task: the recipe's way to chain a step that
    is one command (labelling and training the quality classifier, training the tokenizer). Its output
    goes to the task's log; a failure raises the command's own error line."""

    name = "command"
    type = "🔧 - COMMAND"

    def __init__(self, module: str, argv: Sequence[str]):
        super().__init__()
        self.module = module
        self.argv = list(argv)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        yield from data or ()
        main = importlib.import_module(self.module).main
        command = f"python -m {self.module.removesuffix('.__main__')}"
        logger.info(f"{command} {' '.join(self.argv)}")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(self.argv)
        logger.info(out.getvalue() + err.getvalue())
        if status != 0:
            lines = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
            message = lines[-1].removeprefix("error: ") if lines else f"exit status {status}"
            raise RecipeError(f"{command}: {message}")


def _command_stage(config: RecipeConfig, name: str, module: str, argv: list[str], writes: str) -> Stage:
    return Stage(name, [CommandStep(module, argv)], logging_dir_for(config.prefix(writes), name), tasks=1)


def _stage_config(config_type: type[Any], section: Any, **wired: Any) -> Any:
    """The command config of a section, with what the recipe wires (inputs, output prefix)."""
    fields = {f.name for f in dataclasses.fields(config_type)}
    return config_type(**{k: v for k, v in vars(section).items() if k in fields}, **wired)


def _named(section_name: str, build: Callable[[], list[Stage]]) -> list[Stage]:
    """A stage command's own check, with the section that holds the option it names."""
    try:
        return build()
    except ConfigError:
        raise
    except UserError as error:
        raise RecipeError(f"{section_name}: {error}") from None


def recipe_stages(config: RecipeConfig) -> list[Stage]:
    """Every stage of the recipe in order, each reading what the one before wrote."""
    options = config.executor
    corpus_config = _stage_config(corpus.CorpusConfig, config.corpus, output_prefix=config.prefix("corpus"))
    stages = corpus.stages(corpus_config, options)
    shards = config.prefix("corpus") + "-*.jsonl"

    quality = config.quality
    if quality.enabled:
        classifier = quality.classifier
        if not classifier:
            annotations, classifier = config.prefix("quality.annotations.jsonl"), config.prefix("quality.classifier")
            common = ["--input", shards, "--text-key", quality.text_key, "--on-error", quality.on_error]
            annotate = ["annotate", *common, "--annotator", "heuristic", "--out", annotations, "--no-progress"]
            train = ["train", *common, "--annotations", annotations, "--out", classifier]
            stages.append(
                _command_stage(config, "quality-annotate", "data_tools.quality.__main__", annotate, "quality")
            )
            stages.append(_command_stage(config, "quality-train", "data_tools.quality.__main__", train, "quality"))
        quality_config = _stage_config(
            quality_filter.QualityFilterConfig,
            quality,
            input=[shards],
            output_prefix=config.prefix("quality"),
        )
        quality_config.classifier = classifier
        stages += _named("quality", lambda: quality_filter.stages(quality_config, options))
        shards = config.prefix("quality") + "-*.jsonl"

    if config.dedup.enabled:
        dedup_config = _stage_config(
            dedup.DedupConfig, config.dedup, input=[shards], output_prefix=config.prefix("dedup")
        )
        stages += _named("dedup", lambda: dedup.stages(dedup_config, options))
        shards = config.prefix("dedup") + "-*.jsonl"

    if config.decontaminate.enabled:
        decontaminate_config = _stage_config(
            decontaminate.DecontaminateConfig,
            config.decontaminate,
            input=[shards],
            output_prefix=config.prefix("clean"),
        )
        stages += _named("decontaminate", lambda: decontaminate.stages(decontaminate_config, options))
        shards = config.prefix("clean") + "-*.jsonl"

    tokenize = config.tokenize
    tokenizer = tokenize.tokenizer
    if not tokenizer:
        tokenizer = config.prefix("tokenizer")
        argv = ["train", "--input", shards, "--out", tokenizer, "--vocab-size", str(tokenize.vocab_size)]
        stages.append(_command_stage(config, "tokenizer", "data_tools.tokenizer", argv, "tokenizer"))
    preprocess_config = _stage_config(
        preprocess.PreprocessConfig, tokenize, input=[shards], output_prefix=config.prefix("code")
    )
    preprocess_config.tokenizer = tokenizer
    stages += _named("tokenize", lambda: preprocess.stages(preprocess_config, options))
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
    # each stage's report (totals, per reason and per task) is PREFIX.NAME.json next to its outputs
    print(f"reports: {', '.join(str(p) for p in sorted(Path(config.output_dir).glob('*.*.json')))}")
    print(f"dataset: {config.dataset}.bin/.idx")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Slurm and Ray tasks unpickle the pipeline steps by module: they must be data_tools.recipe's, not __main__'s
    from data_tools.recipe import main as module_main

    sys.exit(module_main())
