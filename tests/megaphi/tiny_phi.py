"""Tiny reference artefacts for tests: a byte-level BPE tokenizer and a random transformers Phi model."""

from __future__ import annotations

from pathlib import Path

import torch

TRAINING_TEXT = [
    "def add(a, b):\n    return a + b\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "for i in range(10):\n    print(i)\n",
    "# A function that sorts a list of numbers.\nimport math\n",
]
EOS = "<|endoftext|>"


def make_tokenizer(out_dir: Path, vocab_size: int = 300) -> Path:
    """Train a byte-level BPE on a few lines of code and save it as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    fast.save_pretrained(str(out_dir))
    return out_dir


def tiny_config(**overrides):
    """A megaphi PhiConfig small enough for any test (vocabulary 300, hidden 32, 2 layers of 4 heads,
    context 64); ``overrides`` are PhiConfig fields."""
    from megaphi.model import PhiConfig

    fields = dict(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return PhiConfig(**{**fields, **overrides})


def tiny_hf_config(vocab_size: int = 300, **overrides):
    from transformers import PhiConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        partial_rotary_factor=0.5,
        rope_theta=10000.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    fields.update(overrides)
    return PhiConfig(**fields)


def make_hf_phi(
    out_dir: Path, *, weights: str = "safetensors", seed: int = 0, tokenizer_dir: Path | None = None, **config_overrides
):
    """Save a randomly initialised transformers PhiForCausalLM (biases and LayerNorms randomised too).

    ``weights="bin"`` writes ``pytorch_model.bin`` instead of ``model.safetensors``, as transformers 4 did;
    ``weights="sharded"`` splits the safetensors into several files with an index.
    """
    from transformers import PhiForCausalLM

    torch.manual_seed(seed)
    model = PhiForCausalLM(tiny_hf_config(**config_overrides)).eval()
    # Default init leaves biases 0 and LayerNorms 1, and its tiny weights make greedy output ignore the
    # prompt; this init makes every tensor count and continuations depend on the prompt.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
            elif "layernorm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.02)
    model.save_pretrained(str(out_dir), **({"max_shard_size": "40KB"} if weights == "sharded" else {}))
    if weights == "bin":
        (out_dir / "model.safetensors").unlink()
        torch.save(model.state_dict(), out_dir / "pytorch_model.bin")
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out_dir))
    return model
