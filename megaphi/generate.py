"""Batched sampling from a phi model with its KV cache: greedy or temperature/top-p, n samples, stop sequences.

Prompts of different lengths share a batch by left padding: each row's positions count only its real
tokens (as transformers' ``generate`` does), so a prompt gives the same greedy continuation alone or in
a batch. Seeded sampling draws each sequence from its own random stream, seeded from (seed, sample
index), so a seeded sample is the same alone, in any batch size, or next to other prompts.
``load_model`` reads a megaphi checkpoint of any tensor parallel size (merging the shards, or
re-splitting them for the current tensor-parallel group) or a Hugging Face Phi directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from megaphi import parallel
from megaphi.common.checkpoints import check_model_path, is_hf_dir
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.common.padding import pad_sequences
from megaphi.convert.checkpoint import load_model_checkpoint
from megaphi.convert.hf import has_tokenizer, load_hf_checkpoint
from megaphi.convert.layout import CheckpointError, merge_state_dicts, split_state_dict
from megaphi.eval.benchmarks import HUMANEVAL_STOP
from megaphi.model import PhiForCausalLM
from megaphi.progress import progress
from megaphi.tokenizer import Tokenizer, load_tokenizer

# is_done(row, new_tokens): whether a row's text is complete (it reached a stop sequence).
IsDone = Callable[[int, list[int]], bool]


def check_device(device: str | torch.device) -> torch.device:
    """The device, or a clear error when this machine has no such device."""
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise CheckpointError(f"device {device!r} is not a device name ({e}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise CheckpointError(
            f"device {device} is not available on this machine "
            f"({torch.cuda.device_count()} CUDA devices); use --device cpu"
        )
    return device


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: str | Path | None = None,
) -> tuple[PhiForCausalLM, Tokenizer]:
    """Load ``(model, tokenizer)`` for inference from a megaphi checkpoint or a Hugging Face Phi directory.

    ``dtype=None`` keeps the stored dtype on accelerators and uses float32 on the CPU (half-precision
    matmuls there are slow or missing). The tokenizer comes from ``tokenizer`` if given, else from the
    checkpoint (its ``tokenizer/`` or the one ``megaphi.json`` names, or the Hugging Face directory),
    loaded by ``megaphi.tokenizer.load_tokenizer`` as preprocessing loaded it: the ids the model trained on.
    """
    path = check_model_path(path)
    device = check_device(device)
    if is_hf_dir(path):
        config, full = load_hf_checkpoint(path)
        found_tokenizer = path if has_tokenizer(path) else None
    else:
        config, shards, meta = load_model_checkpoint(path)
        full = merge_state_dicts(shards, config, meta["path"])
        found_tokenizer = meta["tokenizer_path"]
    tokenizer = tokenizer if tokenizer is not None else found_tokenizer
    if tokenizer is None:
        raise CheckpointError(f"{path} has no tokenizer: pass a Hugging Face tokenizer directory (--tokenizer)")
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else next(iter(full.values())).dtype
    # Inside a tensor-parallel group (a TP server), each rank takes its own shard of the same weights.
    tp = parallel.get_tensor_parallel_world_size() if parallel.is_initialized() else 1
    rank = parallel.get_tensor_parallel_rank() if parallel.is_initialized() else 0
    state_dict = split_state_dict(full, config, tp)[rank]
    model = PhiForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device=device, dtype=dtype).eval(), load_tokenizer(tokenizer)


def eos_token_id(tokenizer: Any) -> int | None:
    """The end-of-text id of a megaphi tokenizer (``eod_id``) or a transformers one (``eos_token_id``)."""
    eod = getattr(tokenizer, "eod_id", None)
    return eod if eod is not None else getattr(tokenizer, "eos_token_id", None)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop sequence; also say whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def sequence_seed(seed: int, sample_index: int) -> int:
    """The seed of one sampled sequence: sample ``sample_index`` of a prompt under the request's ``seed``.

    It depends on nothing else (not the batch, not the prompt's place in a list), which is what makes a
    seeded completion the same alone or batched. Hashed, so that nearby seeds give unrelated streams.
    """
    digest = hashlib.sha256(f"{seed}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sequence_generators(seeds: Sequence[int | None], device: torch.device) -> list[torch.Generator | None]:
    """One generator per row from its ``sequence_seed`` (None: that row draws from torch's global RNG)."""
    return [None if s is None else torch.Generator(device=device).manual_seed(s) for s in seeds]


def sample_next_token(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generators: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """[batch, vocab] logits -> [batch] token ids: argmax at temperature 0, else nucleus sampling.

    ``generators`` gives each row its own random stream (``sequence_generators``); without them every
    row draws from torch's global RNG.
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already cover top_p (the first always stays).
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    # Row by row: one row's draw must not depend on how many rows share the batch.
    return torch.cat([torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(generators)])


@torch.no_grad()
def generate_tokens(
    model: PhiForCausalLM,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    seeds: Sequence[int | None] | None = None,
    is_done: IsDone | None = None,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """One batch: left-pad the token prompts, decode with the KV cache, return each row's new tokens.

    ``seeds`` (one per row, from ``sequence_seed``; None for an unseeded row) fix each row's samples.
    ``vocab_size`` (the tokenizer's) keeps the embedding's padding rows, which no text has, from being drawn.
    A row stops at ``eos_id`` (not included) or when ``is_done(row, new_tokens)`` says so (stop sequences).
    """
    device = next(model.parameters()).device
    input_ids, mask = pad_sequences(prompts, side="left", device=device)
    batch, longest = input_ids.shape
    # Positions count real tokens only; padded slots get any valid position since they are masked out.
    position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    cache = model.new_kv_cache(batch, longest + max_new_tokens, device=device)
    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    generators = sequence_generators(seeds, device) if seeds is not None and temperature > 0 else None
    for _ in range(max_new_tokens):
        logits = model(input_ids, kv_cache=cache, attention_mask=mask, position_ids=position_ids)
        next_ids = sample_next_token(logits[:, -1, :vocab_size], temperature, top_p, generators)
        for row in (~done).nonzero().flatten().tolist():
            token = int(next_ids[row])
            if token == eos_id:
                done[row] = True
                continue
            new_tokens[row].append(token)
            if is_done is not None and is_done(row, new_tokens[row]):
                done[row] = True
        if bool(done.all()):
            break
        input_ids = next_ids.unsqueeze(-1)
        position_ids = position_ids[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=-1)
    return new_tokens


def _check_arguments(
    prompts: Sequence[str] | str, max_new_tokens: int, temperature: float, top_p: float, n: int, batch_size: int
) -> None:
    if isinstance(prompts, str):
        raise UserError("prompts must be a list of strings, got a single string: wrap it in a list")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")


def generate(
    model: PhiForCausalLM,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    n: int = 1,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    show_progress: bool = False,
) -> list[list[str]]:
    """Complete each prompt ``n`` times; returns ``n`` completions per prompt with stop sequences cut.

    ``temperature=0`` is greedy decoding. With a ``seed``, sample j of a prompt comes from the stream
    ``sequence_seed(seed, j)``: the same completion whatever the batch size or the other prompts.
    ``show_progress`` counts finished samples (megaphi.progress).
    """
    _check_arguments(prompts, max_new_tokens, temperature, top_p, n, batch_size)
    stop = list(stop or [])
    encoded = [tokenizer.encode(p) for p in prompts]
    limit = model.config.max_position_embeddings
    for i, ids in enumerate(encoded):
        if not ids:
            raise UserError(f"prompt {i} is empty: give every prompt at least one token")
        if len(ids) + max_new_tokens > limit:
            raise UserError(
                f"prompt {i} has {len(ids)} tokens; with max_new_tokens {max_new_tokens} it exceeds "
                f"max_position_embeddings {limit}: shorten the prompt or lower max_new_tokens"
            )
    # (prompt index, sample index, ids), longest first so each batch holds prompts of similar length.
    requests = sorted(((i, j, ids) for i, ids in enumerate(encoded) for j in range(n)), key=lambda r: -len(r[2]))
    # Stop sequences are text, and a token can end mid-sequence: check the decoded continuation each step.
    is_done = (lambda row, ids: cut_at_stop(tokenizer.decode(ids), stop)[1]) if stop else None
    completions: list[list[tuple[int, str]]] = [[] for _ in prompts]
    bar = progress(total=len(requests), desc="generate", unit="samples", disable=not show_progress)
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        seeds = None if seed is None else [sequence_seed(seed, j) for _, j, _ in chunk]
        tokens = generate_tokens(
            model,
            [ids for _, _, ids in chunk],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_id=eos_token_id(tokenizer),
            seeds=seeds,
            is_done=is_done,
            vocab_size=tokenizer.vocab_size,
        )
        for (prompt_index, sample_index, _), ids in zip(chunk, tokens):
            completions[prompt_index].append((sample_index, cut_at_stop(tokenizer.decode(ids), stop)[0]))
        bar.update(len(chunk))
    bar.close()
    # Samples in index order, whichever batch each one ran in.
    return [[text for _, text in sorted(per_prompt)] for per_prompt in completions]


@entry_point
def main(argv: list[str] | None = None) -> int:
    """python -m megaphi.generate --model DIR --prompt TEXT ...: print completions as JSON lines."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m megaphi.generate", description=main.__doc__)
    parser.add_argument("--model", required=True, help="megaphi checkpoint or Hugging Face Phi directory")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--n-samples", "-n", dest="n", type=int, default=1, help="completions per prompt")
    parser.add_argument("--stop", action="append", default=None, help="stop sequence (repeatable)")
    parser.add_argument("--humaneval-stop", action="store_true", help="use HumanEval's usual stop sequences")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    stop = (args.stop or []) + (list(HUMANEVAL_STOP) if args.humaneval_stop else [])
    model, tokenizer = load_model(args.model, device=args.device)
    outputs = generate(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        n=args.n,
        stop=stop,
        seed=args.seed,
        batch_size=args.batch_size,
        show_progress=True,
    )
    for prompt, completions in zip(args.prompt, outputs):
        print(json.dumps({"prompt": prompt, "completions": completions}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
