"""Synthetic textbooks and exercises from an OpenAI-compatible endpoint (phi-1 paper, section 2.2).

    python -m data_tools.synth textbooks --count 1000 --out synth/textbooks.jsonl --base-url URL --model M
    python -m data_tools.synth exercises --count 1000 --out synth/exercises.jsonl --base-url URL --model M
    python -m data_tools.synth outline --out synth/outline.yaml --base-url URL --model M
    python -m data_tools.synth report --input synth/textbooks.jsonl --out-dir synth/report

The paper found that diversity has to be forced into the prompts, so every prompt is one point of a
prompt space, drawn with a seed and without replacement (no prompt repeats before all have been
used; data_tools.synth_prompts). Three spaces, each from YAML in data_tools/prompts/:
- hand-written lists (default): topics with subtopics, audiences, styles and, for exercises,
  concepts and function-name verbs/nouns; about a thousand textbook prompts;
- ``--outline FILE``: topic -> subtopic -> concept triples that the model itself expanded once
  (``outline``, data_tools.synth_outline), reviewable YAML;
- ``--seed-corpus [PATH ...]``: a code snippet or identifier set drawn from a corpus, by default
  the quality-filtered code shards (data_tools.synth_seeds); grows with the corpus.
The number of distinct prompts is printed before a run starts, with a warning when ``--count``
exceeds it by more than ``--warn-repeats``. ``report`` measures how diverse the outputs turned out
(data_tools.synth_report).

Exercises are HumanEval-shaped (signature + docstring, solution, `check(candidate)` tests) and are
kept only if they parse, their solution passes its own tests in the evaluation sandbox, and their
solution and tests do not nearly repeat an exercise with an earlier id (MinHash at the dedup stage's
settings; data_tools.synth_exercises); everything else goes to the failure log with the reason.
Requests go through data_tools.llm (data_tools.synth_task): a killed run resumes when rerun.

A run is split into ``--tasks`` tasks on the data stages' executors (``--executor local|slurm|ray``),
each asking for its own share of the ids, and merged into ``--out`` by a last one-task stage with a
per-task summary: data_tools.synth_run (which also holds ``stages()`` for the data recipe).
"""

from __future__ import annotations

import argparse
import json
import sys

from data_tools.executors import add_executor_arguments, executor_options_from_args, fields_from_args
from data_tools.llm import client_config_from_args
from data_tools.synth_outline import add_outline_arguments, run_outline_command
from data_tools.synth_prompts import KINDS
from data_tools.synth_report import add_report_arguments, run_report_command
from data_tools.synth_run import synthesize
from data_tools.synth_seeds import DEFAULT_SEED_CORPUS, SEED_KINDS, SeedOptions
from data_tools.synth_task import SynthConfig, add_generation_arguments
from megaphi.common.cli import entry_point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="kind", required=True)
    for kind in KINDS:
        sub = commands.add_parser(kind, help=f"generate {kind}")
        sub.add_argument("--count", type=int, required=True, help="number of prompts to sample")
        sub.add_argument(
            "--out",
            required=True,
            help="output JSONL, merged from the tasks' files in OUT.tasks/ (kept: a rerun resumes from them)",
        )
        sub.add_argument("--failures", help="merged failure log JSONL (default: OUT with .failures.jsonl)")
        sub.add_argument("--prompts", help="prompt YAML (default: data_tools/prompts/KIND.yaml)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the prompt sampling (and of the seed pool)")
        source = sub.add_mutually_exclusive_group()
        source.add_argument(
            "--outline",
            help="draw topic/subtopic/concept from this outline YAML (written by `python -m data_tools.synth outline`)",
        )
        source.add_argument(
            "--seed-corpus",
            nargs="*",
            metavar="PATH",
            help="condition each prompt on a snippet or identifier set drawn from these corpus "
            f"files (no PATH: {DEFAULT_SEED_CORPUS}, the quality-filtered code)",
        )
        sub.add_argument("--seed-pool", type=int, default=SeedOptions.pool, help="documents drawn from the seed corpus")
        sub.add_argument("--seed-kinds", nargs="+", choices=SEED_KINDS, default=list(SEED_KINDS))
        sub.add_argument(
            "--warn-repeats",
            type=float,
            default=1.0,
            metavar="FACTOR",
            help="warn when --count exceeds the distinct prompts by more than FACTOR (default 1)",
        )
        sub.add_argument("--keep-truncated", action="store_true", help="keep textbooks cut at --max-tokens")
        sub.add_argument("--sandbox-timeout", type=float, default=10.0, help="seconds per exercise run")
        sub.add_argument("--sandbox-memory-mb", type=int, default=1024)
        sub.add_argument(
            "--unsafe-no-sandbox",
            action="store_true",
            help="run model-written exercises WITHOUT isolation (only where bwrap cannot run)",
        )
        sub.add_argument(
            "--keep-near-duplicates",
            action="store_true",
            help="keep exercises whose solution and tests nearly repeat a kept one's",
        )
        add_generation_arguments(sub, per_task=True)
        add_executor_arguments(sub)
    add_outline_arguments(commands.add_parser("outline", help="expand topics into subtopics and concepts (YAML)"))
    add_report_arguments(commands.add_parser("report", help="diversity report of generated JSONL"))
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "outline":
        return run_outline_command(args)
    if args.kind == "report":
        return run_report_command(args)
    # every field is the flag of its name; the client is built from the endpoint flags
    client = client_config_from_args(args, check=False)  # checked with the rest by config.check()
    config = fields_from_args(SynthConfig, args, client=client)
    options = executor_options_from_args(args)
    summary = synthesize(config, options)
    if summary is None:  # submitted to Slurm: the summary appears when its job has run
        return 0
    print(json.dumps(summary))
    if summary["failed"] and not summary["succeeded"] and not summary["rejected"]:
        # no answer at all (rejected answers are the validator doing its job)
        print(
            f"error: every request failed (reasons in {config.failures_path}); check the endpoint, model and key",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
