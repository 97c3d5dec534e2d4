"""Embeddings: where they run, and batching across files."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from data_tools import embed
from data_tools.embed import EmbedderError, load_embedder, resolve_device


def test_embedding_device_is_chosen_explicitly(monkeypatch, caplog):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(embed, "cuda_visible", lambda: False)  # as on this CPU-only machine
    with caplog.at_level(logging.INFO, logger="data_tools.embed"):
        assert resolve_device("auto") == "cpu"
    assert "embedding device: cpu (--device auto; no CUDA device visible" in caplog.text
    with pytest.raises(EmbedderError, match="--device cuda but this process sees no CUDA device.*--device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(embed, "cuda_visible", lambda: True)  # a task given a GPU
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_tools.embed"):
        assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    assert "embedding device: cuda (--device auto; a CUDA device is visible, fp16)" in caplog.text
    with pytest.raises(EmbedderError, match="--device 'gpu': choose one of auto, cpu, cuda"):
        resolve_device("gpu")


@pytest.mark.slow
def test_minilm_embeds_many_files_per_batch_as_it_embeds_each_alone():
    texts = [
        "def add(a, b):\n    return a + b\n",
        '"""A module."""\n' + "import os\n" * 40,
        "class Stack:\n    def __init__(self):\n        self.items = []\n",
        "x = 1",
    ]
    embedder = load_embedder("minilm", device="cpu")
    assert embedder.device == "cpu"
    together = embedder.encode(texts, batch_size=4)
    alone = np.concatenate([embedder.encode([t]) for t in texts])
    assert together.dtype == np.float32 and together.shape == (4, 384)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_causal_lm_embedder_mean_pools_the_models_last_hidden_states(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from data_tools.embed import load_embedder
    from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer

    make_tokenizer(tmp_path)
    reference = make_hf_phi(tmp_path, tokenizer_dir=tmp_path)
    texts = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n" * 3]
    vectors = load_embedder(str(tmp_path)).encode(texts)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    for text, vector in zip(texts, vectors, strict=True):
        with torch.no_grad():
            hidden = reference(torch.tensor([tokenizer.encode(text)]), output_hidden_states=True).hidden_states[-1]
        expected = hidden[0].mean(0).numpy()
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)
