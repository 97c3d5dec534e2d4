"""One tokenization: preprocessing, generation, serving and evaluation see the same ids for the same text.

For each tokenizer kind (a byte-level BPE like codegen-350M-mono's, a SentencePiece model whose directory
holds only ``tokenizer.model``, and a Hugging Face directory of codegen's slow files ``vocab.json`` +
``merges.txt``) the ids preprocessing writes to the .bin/.idx are the ids every inference stage encodes,
and they equal the reference library's own encoding (transformers' AutoTokenizer, sentencepiece).
"""

import json
import shutil
import sysconfig
from pathlib import Path

import openai
import pytest
import torch

from data_tools.preprocess import preprocess
from data_tools.tokenizer import train_bpe, train_sentencepiece
from megaphi.backends import load_backend
from megaphi.convert.checkpoint import save_model_checkpoint
from megaphi.data.indexed import IndexedDataset
from megaphi.eval.benchmarks import Benchmark, Problem
from megaphi.eval.sampling import NOT_GENERATED, SamplingConfig, generate_samples
from megaphi.generate import load_model
from megaphi.model import PhiForCausalLM
from megaphi.serve import build_server
from megaphi.tokenizer import EOD_TOKEN, load_tokenizer
from megaphi.vocab import padded_vocab_size
from tests.megaphi.test_serve import running
from tests.megaphi.tiny_phi import tiny_config

CONTEXT = 64
TEXTS = [
    "def add(a, b):\n        return a + b\n\t\tpass\n",
    f"first document{EOD_TOKEN}second, with the end-of-text marker inside",
    "# unicode: é, 中文, emoji 🙂\nx = 'ünïcödé'\n",
    "class Point:\n    def norm(self):\n        return (self.x ** 2 + self.y ** 2) ** 0.5\n" * 3,  # > CONTEXT
]


def _stdlib_json_sources() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(Path(sysconfig.get_paths()["stdlib"], "json").glob("*.py"))]


def _codegen_style_slow_files(bpe_dir: Path, out: Path) -> Path:
    """The files codegen-350M-mono ships (vocab.json + merges.txt + tokenizer_config.json), no tokenizer.json."""
    shutil.copytree(bpe_dir, out)
    fast = json.loads((out / "tokenizer.json").read_text())
    (out / "tokenizer.json").unlink()
    (out / "vocab.json").write_text(json.dumps(fast["model"]["vocab"]))
    merges = ["#version: 0.2"] + [" ".join(m) if isinstance(m, list) else m for m in fast["model"]["merges"]]
    (out / "merges.txt").write_text("\n".join(merges) + "\n")
    return out


@pytest.fixture(scope="module", params=["byte-level-bpe", "sentencepiece", "hf-slow-files"])
def tokenizer_kind(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    sources = _stdlib_json_sources()
    if request.param == "sentencepiece":
        directory = root / "spm"
        train_sentencepiece(sources, directory, vocab_size=400)
        assert sorted(p.name for p in directory.iterdir()) == ["tokenizer.model"]
    else:
        directory = root / "bpe"
        train_bpe(sources, directory, vocab_size=400, show_progress=False)
        if request.param == "hf-slow-files":
            directory = _codegen_style_slow_files(directory, root / "slow")
    return request.param, directory


@pytest.fixture(scope="module")
def checkpoint(tokenizer_kind, tmp_path_factory):
    """A random megaphi model (context CONTEXT) saved with this tokenizer as its own."""
    _, directory = tokenizer_kind
    vocab = padded_vocab_size(load_tokenizer(directory).vocab_size)
    config = tiny_config(vocab_size=vocab, num_hidden_layers=1, max_position_embeddings=CONTEXT)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_model_checkpoint(path, config, [PhiForCausalLM(config).state_dict()], tokenizer_dir=directory)
    return path


@pytest.fixture(scope="module")
def preprocessed_ids(tokenizer_kind, tmp_path_factory) -> list[list[int]]:
    """What training reads: the documents preprocessing wrote to the .bin/.idx."""
    _, directory = tokenizer_kind
    root = tmp_path_factory.mktemp("data")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    result = preprocess([root / "docs.jsonl"], root / "docs", directory, progress=False)
    dataset = IndexedDataset(result.prefixes["text"])
    return [dataset[i].tolist() for i in range(len(TEXTS))]


def test_preprocessing_writes_the_reference_librarys_ids(tokenizer_kind, preprocessed_ids):
    kind, directory = tokenizer_kind
    if kind == "sentencepiece":
        import sentencepiece

        reference = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        expected = [reference.encode(t) for t in TEXTS]
    else:
        from transformers import AutoTokenizer

        reference = AutoTokenizer.from_pretrained(str(directory))
        expected = [reference.encode(t) for t in TEXTS]
    assert preprocessed_ids == expected
    assert len(preprocessed_ids[3]) > CONTEXT


def test_generation_encodes_as_preprocessing_did(checkpoint, preprocessed_ids):
    _, tokenizer = load_model(checkpoint)
    assert [tokenizer.encode(t) for t in TEXTS] == preprocessed_ids
    assert [tokenizer.decode(ids) for ids in preprocessed_ids[:1]] == TEXTS[:1]


def test_serving_encodes_as_preprocessing_did(checkpoint, preprocessed_ids):
    server = build_server(checkpoint, model_name="m", batch_window_s=0.0)
    assert [server.tokenizer.encode(t) for t in TEXTS] == preprocessed_ids
    assert [load_backend(checkpoint).tokenizer.encode(t) for t in TEXTS] == preprocessed_ids
    with running(server.app()) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        for text, ids in zip(TEXTS[:3], preprocessed_ids[:3], strict=True):
            response = client.completions.create(model="m", prompt=text, max_tokens=1, temperature=0)
            assert response.usage.prompt_tokens == len(ids)
        with pytest.raises(openai.BadRequestError, match=f"the prompt has {len(preprocessed_ids[3])} tokens"):
            client.completions.create(model="m", prompt=TEXTS[3], max_tokens=1)


def test_evaluation_encodes_as_preprocessing_did(checkpoint, preprocessed_ids):
    problems = tuple(Problem(f"T/{i}", prompt=t, tests="", reference="") for i, t in enumerate(TEXTS))
    benchmark = Benchmark("texts", problems, stop=())
    samples = generate_samples(benchmark, str(checkpoint), SamplingConfig(max_new_tokens=4))
    # The prompt longer than the context is reported with its token count; the others are generated.
    assert [NOT_GENERATED in s for s in samples] == [False, False, False, True]
    assert f"the prompt has {len(preprocessed_ids[3])} tokens" in samples[3][NOT_GENERATED]
