"""The one way every stage loads a tokenizer: preprocessing, training, generation, serving, evaluation.

A model must see at inference exactly the ids it was trained on, so ``data_tools.preprocess`` (which
writes the training ids), ``megaphi.generate``, ``megaphi.serve`` and ``megaphi.eval`` all encode through
:func:`load_tokenizer`. It reads a Hugging Face tokenizer directory (``tokenizer.json``, or whatever
``AutoTokenizer`` loads, such as codegen's ``vocab.json`` + ``merges.txt``) or a SentencePiece model (a
``.model`` file, or a directory holding only ``tokenizer.model``), and gives one interface: ``encode``
(no special tokens added: documents are ended by ``eod_id`` explicitly), ``encode_batch``, ``decode``,
``eod_id``, ``vocab_size``, and the directory's ``chat_template`` and ``special_tokens`` for serving.
Training tokenizers lives in ``data_tools.tokenizer``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from megaphi.common.errors import UserError

if TYPE_CHECKING:
    import tokenizers

EOD_TOKEN = "<|endoftext|>"
SENTENCEPIECE_FILE = "tokenizer.model"
# Names transformers gives special tokens in tokenizer_config.json; chat templates refer to them.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class TokenizerError(UserError):
    """A tokenizer that cannot be loaded or trained as asked."""


class Tokenizer:
    """The interface the data tools and generation share, over a Hugging Face ``tokenizers`` model."""

    chat_template: str | None = None  # the directory's Jinja chat template, if it has one
    special_tokens: dict[str, str] = {}  # bos_token, eos_token, ... as a chat template sees them
    _backend: Any  # a tokenizers.Tokenizer; SentencePieceTokenizer's is a SentencePieceProcessor

    def __init__(self, backend: tokenizers.Tokenizer, eod_id: int, path: str) -> None:
        self._backend = backend
        self.eod_id = eod_id
        self.path = path
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        # encode_batch_fast skips offset tracking, which nothing here needs
        self._encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size}, eod_id={self.eod_id})"


class SentencePieceTokenizer(Tokenizer):
    """Same interface over a SentencePiece model file; its end-of-sentence piece is the EOD."""

    def __init__(self, model_file: str) -> None:
        import sentencepiece as spm

        self._backend = spm.SentencePieceProcessor(model_file=model_file)
        self.path = model_file
        self.vocab_size = self._backend.get_piece_size()
        self.eod_id = self._backend.eos_id()
        self.special_tokens = {"eos_token": self._backend.id_to_piece(self.eod_id)} if self.eod_id >= 0 else {}
        if self.eod_id < 0:
            raise TokenizerError(
                f"sentencepiece model {model_file} has no end-of-sentence piece to end documents; retrain it with eos_id set"
            )

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._backend.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(list(ids))


def _read_config(directory: Path) -> dict:
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path} is not valid JSON ({exc}); restore or re-save the tokenizer") from None
    if not isinstance(config, dict):
        raise TokenizerError(f"{path} is not a JSON object; restore or re-save the tokenizer")
    return config


def _token_text(value: object) -> str | None:
    return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None


def _chat_template(directory: Path, config: dict) -> str | None:
    """The template transformers would use: chat_template.jinja (newer layout), else the config's entry."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a Hugging Face tokenizer directory (``tokenizer.json``, or whatever
    ``AutoTokenizer`` loads, e.g. codegen's ``vocab.json`` + ``merges.txt``), or a SentencePiece
    model (a ``.model`` file or a directory holding ``tokenizer.model``)."""
    path = Path(path)
    if not path.exists():
        raise TokenizerError(
            f"tokenizer {path} does not exist; train one with `python -m data_tools.tokenizer train --out {path}`"
        )
    if path.is_file() and path.suffix == ".model":
        return SentencePieceTokenizer(str(path))
    if not path.is_dir():
        raise TokenizerError(f"tokenizer {path} is neither a tokenizer directory nor a sentencepiece .model file")
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer as HFTokenizer

        try:
            backend = HFTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the Rust library raises a bare Exception for a damaged file
            raise TokenizerError(
                f"{path / 'tokenizer.json'} cannot be read ({exc}); restore or retrain the tokenizer"
            ) from None
    elif (path / SENTENCEPIECE_FILE).is_file() and not (path / "tokenizer_config.json").is_file():
        return SentencePieceTokenizer(str(path / SENTENCEPIECE_FILE))
    else:
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"cannot load a tokenizer from {path}: {exc}") from None
        if not hasattr(hf, "backend_tokenizer"):
            raise TokenizerError(f"{path} has only a slow tokenizer; save it with a tokenizer.json (a fast tokenizer)")
        backend = hf.backend_tokenizer
    config = _read_config(path)
    eod = _token_text(config.get("eos_token")) or EOD_TOKEN
    eod_id = backend.token_to_id(eod)
    if eod_id is None:
        raise TokenizerError(f"tokenizer {path} has no end-of-document token {eod!r}; add it as a special token")
    tokenizer = Tokenizer(backend, eod_id, str(path))
    tokenizer.chat_template = _chat_template(path, config)
    tokenizer.special_tokens = {
        name: text for name in SPECIAL_TOKEN_NAMES if (text := _token_text(config.get(name))) is not None
    }
    return tokenizer
