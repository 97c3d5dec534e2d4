"""python -m megaphi.convert {from-hf,to-hf,reshard}: move checkpoints between megaphi and Hugging Face."""

from __future__ import annotations

import argparse
import sys

from megaphi.common.cli import entry_point
from megaphi.convert.conversions import convert_from_hf, convert_to_hf, reshard_checkpoint


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# Every command names the model it reads --model (eval, serve and generate too) and a tensor
# parallel size --tensor-parallel-size (as data_tools.tokenizer does); the older --hf, --checkpoint
# and --tp spellings stay accepted.
MEGAPHI_MODEL_HELP = "megaphi checkpoint: a tag directory, or a checkpoint root with 'latest'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megaphi.convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("from-hf", help="Hugging Face Phi directory (transformers or legacy MixFormer) -> megaphi")
    p.add_argument(
        "--model",
        "--hf",
        dest="model",
        required=True,
        help="Hugging Face model directory: config.json and safetensors/.bin weights",
    )
    p.add_argument("--out", required=True, help="new megaphi checkpoint directory")
    p.add_argument(
        "--tensor-parallel-size",
        "--tp",
        dest="tp",
        type=_positive_int,
        default=1,
        help="tensor parallel size to split for (default 1)",
    )

    p = sub.add_parser("to-hf", help="megaphi checkpoint (any TP) -> transformers PhiForCausalLM directory")
    p.add_argument("--model", "--checkpoint", dest="model", required=True, help=MEGAPHI_MODEL_HELP)
    p.add_argument("--out", required=True, help="new Hugging Face model directory")

    p = sub.add_parser("reshard", help="rewrite a megaphi checkpoint for another tensor parallel size")
    p.add_argument("--model", "--checkpoint", dest="model", required=True, help=MEGAPHI_MODEL_HELP)
    p.add_argument(
        "--tensor-parallel-size", "--tp", dest="tp", type=_positive_int, required=True, help="new tensor parallel size"
    )
    p.add_argument("--out", required=True, help="new megaphi checkpoint directory")
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "from-hf":
        out = convert_from_hf(args.model, args.out, args.tp)
    elif args.command == "to-hf":
        out = convert_to_hf(args.model, args.out)
    else:
        out = reshard_checkpoint(args.model, args.out, args.tp)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
