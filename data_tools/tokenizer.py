"""Tokenizers for code: load a Hugging Face tokenizer directory, or train one like codegen-350M-mono.

phi-1 used the codegen-350M-mono tokenizer: GPT-2 byte-level BPE (50257 entries, ``<|endoftext|>``
ends a document) plus 38 added tokens for runs of 2-31 spaces and 2-9 tabs, because indentation is
most of what code is made of. :func:`train_bpe` builds that design on any corpus; :func:`train_sentencepiece`
is the SentencePiece BPE alternative. Both load back through :func:`load_tokenizer`
(``megaphi.tokenizer``), the single loading path and interface every stage uses (``encode``,
``encode_batch``, ``decode``, ``eod_id``, ``vocab_size``), from preprocessing to serving.

    python -m data_tools.tokenizer train --out tok/ --vocab-size 50257          # stdlib corpus
    python -m data_tools.tokenizer train --input data/*.jsonl --kind sentencepiece --out spm/
    python -m data_tools.tokenizer info tok/
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from data_tools.jsonl import OnError
from megaphi.common.cli import entry_point
from megaphi.tokenizer import (
    EOD_TOKEN,
    SENTENCEPIECE_FILE,
    Tokenizer,  # noqa: F401
    TokenizerError,
    load_tokenizer,
)
from megaphi.vocab import padded_vocab_size

# codegen-350M-mono's added whitespace tokens: runs of 2-31 spaces and 2-9 tabs
WHITESPACE_RUNS = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]
# sentencepiece works on "sentences"; a source file is one, and must not be truncated
_SPM_MAX_SENTENCE_BYTES = 1 << 22


# --- training -------------------------------------------------------------------------------------


def _check_vocab_size(vocab_size: int, minimum: int) -> None:
    if vocab_size < minimum:
        raise TokenizerError(f"vocab size {vocab_size} is too small; it must be at least {minimum}")


def train_bpe(
    texts: Iterable[str],
    output_dir: str | os.PathLike,
    vocab_size: int = 50257,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE like codegen-350M-mono's and save it where
    ``transformers.AutoTokenizer.from_pretrained(output_dir)`` loads it (a GPT2TokenizerFast).

    ``vocab_size`` counts the BPE vocabulary with ``<|endoftext|>`` (GPT-2: 50257); the 38 whitespace
    tokens come on top (codegen: 50295)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]  # exported lazily, unseen by mypy

    _check_vocab_size(vocab_size, 257)
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    texts = _non_empty(texts)
    backend.train_from_iterator(texts, trainer)
    # matched before byte-level splitting, longest run first, exactly as codegen's added tokens
    backend.add_tokens([AddedToken(run, normalized=False) for run in WHITESPACE_RUNS])
    hf = GPT2TokenizerFast(
        tokenizer_object=backend, eos_token=EOD_TOKEN, bos_token=EOD_TOKEN, unk_token=EOD_TOKEN, add_prefix_space=False
    )
    hf.save_pretrained(str(output_dir))
    return load_tokenizer(output_dir)


def train_sentencepiece(texts: Iterable[str], output_dir: str | os.PathLike, vocab_size: int = 32000) -> Tokenizer:
    """Train a SentencePiece BPE model for code: no whitespace normalisation (indentation is
    syntax), byte fallback (no unknown characters), the same whitespace runs as user symbols, and
    ``<|endoftext|>`` as its end-of-sentence piece. Saved as ``output_dir/tokenizer.model``."""
    import sentencepiece as spm

    _check_vocab_size(vocab_size, 256 + len(WHITESPACE_RUNS) + 2)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_non_empty(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        eos_id=1,
        bos_id=-1,
        pad_id=-1,
        eos_piece=EOD_TOKEN,
        user_defined_symbols=WHITESPACE_RUNS,
        max_sentence_length=_SPM_MAX_SENTENCE_BYTES,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / SENTENCEPIECE_FILE).write_bytes(model.getvalue())
    return load_tokenizer(output_dir)


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    """Pass texts through, raising at the end if there were none (an empty corpus trains nothing)."""
    count = 0
    for text in texts:
        if text:
            count += 1
            yield text
    if count == 0:
        raise TokenizerError(
            "the training corpus is empty; give --input files with text (or none, for the standard library)"
        )


def corpus_texts(inputs: Sequence[str], on_error: OnError = "stop") -> Iterator[str]:
    """Texts to train on: anything ``data_tools.corpus`` reads; the standard library when no input."""
    from data_tools.corpus_sources import iter_corpus

    return (record["text"] for record in iter_corpus(inputs, on_error=on_error))


def describe(tokenizer: Tokenizer, tensor_parallel_size: int = 1) -> str:
    padded = padded_vocab_size(tokenizer.vocab_size, tensor_parallel_size=tensor_parallel_size)
    return (
        f"{tokenizer.path}: vocab size {tokenizer.vocab_size}, end of document id {tokenizer.eod_id}, "
        f"model vocab padded to {padded} (multiple of {128 * tensor_parallel_size} for tensor parallel {tensor_parallel_size})"
    )


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.tokenizer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a tokenizer on JSONL/parquet texts or the standard library")
    train.add_argument(
        "--input",
        nargs="*",
        default=[],
        help="corpus inputs as data_tools.corpus reads them: directories, JSONL, parquet (default: the Python standard library)",
    )
    train.add_argument("--out", "--output", dest="output", required=True, help="directory to save the tokenizer to")
    train.add_argument(
        "--kind",
        choices=("bpe", "sentencepiece"),
        default="bpe",
        help="bpe: byte-level BPE like codegen-350M-mono (default); sentencepiece: SentencePiece BPE",
    )
    train.add_argument(
        "--vocab-size", type=int, default=None, help="vocabulary size (default: 50257 for bpe, 32000 for sentencepiece)"
    )
    train.add_argument("--min-frequency", type=int, default=2, help="bpe: minimum pair frequency to merge")
    train.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="malformed JSONL lines: stop (default) or skip them",
    )
    info = sub.add_parser("info", help="print a tokenizer's vocab size, EOD id and padded model vocab")
    info.add_argument("path", help="tokenizer directory or sentencepiece .model")
    for p in (train, info):
        p.add_argument(
            "--tensor-parallel-size", type=int, default=1, help="pad the reported model vocab for this TP size"
        )
    args = parser.parse_args(argv)
    if args.tensor_parallel_size < 1:
        raise TokenizerError(f"--tensor-parallel-size must be at least 1, got {args.tensor_parallel_size}")
    if args.command == "train":
        texts = corpus_texts(args.input, args.on_error)
        if args.kind == "bpe":
            tokenizer = train_bpe(texts, args.output, args.vocab_size or 50257, args.min_frequency)
        else:
            tokenizer = train_sentencepiece(texts, args.output, args.vocab_size or 32000)
    else:
        tokenizer = load_tokenizer(args.path)
    print(describe(tokenizer, args.tensor_parallel_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
