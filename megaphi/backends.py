"""The models megaphi.serve can run: megaphi's own phi model, or any transformers causal LM.

Both backends answer the same question for the server's batcher: given a batch of token prompts and one
set of sampling parameters, return each row's new tokens (EOS excluded), ending a row early when
``is_done(row, new_tokens)`` says so (a row's own token limit or stop sequences). Both sample with
``megaphi.generate.sample_next_token``, each seeded row from its own random stream (``seeds``), so a
seeded row's text does not depend on what else shares its batch.

``load_backend`` picks one from the directory: megaphi checkpoints and Hugging Face *Phi* directories
run on megaphi's model (its KV cache and tensor parallelism); any other Hugging Face causal-LM
directory (GPT-2, Llama, Qwen, CodeGen, ...) runs on ``AutoModelForCausalLM.generate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from megaphi.common.checkpoints import check_model_path
from megaphi.common.padding import pad_sequences
from megaphi.convert.hf import PHI_MODEL_TYPES, has_tokenizer
from megaphi.model import PhiForCausalLM
from megaphi.tokenizer import Tokenizer, load_tokenizer
from megaphi.generate import (
    IsDone,
    check_device,
    eos_token_id,
    generate_tokens,
    is_hf_dir,
    load_model,
    sample_next_token,
    sequence_generators,
)
from megaphi.common.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# OpenAI's parameters are the whole decoding rule: switch off the other logits processors that a
# model's generation_config.json may turn on (transformers fills unset fields from it).
NEUTRAL_GENERATION = dict(
    num_beams=1,
    typical_p=1.0,
    min_p=None,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    min_length=0,
    min_new_tokens=None,
    bad_words_ids=None,
    suppress_tokens=None,
    begin_suppress_tokens=None,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
)
# Config fields that hold a model's context length, in the order transformers' architectures use them.
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")


class Backend(Protocol):
    tokenizer: Any
    context: int  # most positions a prompt and its completion may take together

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seeds: list[int | None] | None,
        is_done: IsDone | None,
    ) -> list[list[int]]:
        """``seeds``: one per row (``megaphi.generate.sequence_seed``), None for a row without a seed."""


class MegaphiBackend:
    """megaphi's PhiForCausalLM with its KV cache (``megaphi.generate.generate_tokens``)."""

    def __init__(self, model: PhiForCausalLM, tokenizer: Tokenizer, context: int | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.context = serving_context(model.config.max_position_embeddings, context)
        self.eos_id = eos_token_id(tokenizer)

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seeds: list[int | None] | None,
        is_done: IsDone | None,
    ) -> list[list[int]]:
        return generate_tokens(
            self.model,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_id=self.eos_id,
            seeds=seeds,
            is_done=is_done,
            vocab_size=self.tokenizer.vocab_size,
        )


class _RowStopper:
    """A transformers stopping criterion that ends rows one by one and records each row's length."""

    def __init__(self, prompt_len: int, eos_ids: set[int], is_done: IsDone | None) -> None:
        self.prompt_len, self.eos_ids, self.is_done = prompt_len, eos_ids, is_done
        self.lengths: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        for row in range(input_ids.shape[0]):
            if row in self.lengths:
                continue
            new = input_ids[row, self.prompt_len :].tolist()
            if new and new[-1] in self.eos_ids:
                self.lengths[row] = len(new) - 1
            elif self.is_done is not None and self.is_done(row, new):
                self.lengths[row] = len(new)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done[list(self.lengths)] = True
        return done


class _Sampler:
    """A transformers logits processor that picks each row's token as megaphi's own model does (greedy, or
    sampled with per-row random streams instead of transformers' global RNG; never an id of the
    embedding's padding past the tokenizer's vocabulary) and leaves only that token possible, so that
    greedy ``generate`` takes it."""

    def __init__(
        self, temperature: float, top_p: float, generators: list[torch.Generator | None] | None, vocab_size: int
    ) -> None:
        self.temperature, self.top_p, self.generators, self.vocab_size = temperature, top_p, generators, vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = sample_next_token(scores[:, : self.vocab_size], self.temperature, self.top_p, self.generators)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(-1, chosen.unsqueeze(-1), 0.0)


class HFBackend:
    """Any transformers causal LM through ``model.generate`` (left padding with an attention mask)."""

    def __init__(self, model: PreTrainedModel, tokenizer: Tokenizer, context: int | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.context = serving_context(model_context_length(model.config), context)
        # A row ends at the tokenizer's EOS or at any end-of-turn id the model's generation config adds.
        configured = model.generation_config.eos_token_id
        configured = [configured] if isinstance(configured, int) else list(configured or [])
        self.eos_ids = [i for i in [eos_token_id(tokenizer), *configured] if i is not None]
        # Pad slots are masked out, so any id will do; transformers also writes it after a row has ended.
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seeds: list[int | None] | None,
        is_done: IsDone | None,
    ) -> list[list[int]]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        device = next(self.model.parameters()).device
        input_ids, mask = pad_sequences(prompts, self.pad_id, side="left")
        longest = input_ids.shape[1]
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids or None,
            **NEUTRAL_GENERATION,
        )
        stopper = _RowStopper(longest, set(self.eos_ids), is_done)
        generators = sequence_generators(seeds, device) if seeds is not None and temperature > 0 else None
        processors = LogitsProcessorList([_Sampler(temperature, top_p, generators, self.tokenizer.vocab_size)])
        # generate comes from GenerationMixin, which transformers' PreTrainedModel type leaves out
        output = self.model.generate(  # type: ignore[operator]
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
        new = output[:, longest:].tolist()
        return [ids[: stopper.lengths.get(row, len(ids))] for row, ids in enumerate(new)]


def model_context_length(config: Any) -> int | None:
    """The context length a transformers config states, under whichever name its architecture uses."""
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def serving_context(own: int | None, max_model_len: int | None) -> int:
    """The model's own context length, or the smaller one the user asked for."""
    if max_model_len is None:
        if own is None:
            raise UserError(
                f"the model's config states no context length in any of {', '.join(CONTEXT_FIELDS)}: "
                f"pass max_model_len (--max-model-len)"
            )
        return own
    if max_model_len < 2:
        raise UserError(f"max_model_len must be at least 2 (a prompt token and a new one), got {max_model_len}")
    if own is not None and max_model_len > own:
        raise UserError(f"max_model_len {max_model_len} exceeds the model's context length {own}: pass at most {own}")
    return max_model_len


def _hf_model_type(path: Path) -> str:
    config_path = path / "config.json"
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UserError(f"{config_path} is not a JSON object: {e}") from None
    if not isinstance(model_type, str) or not model_type:
        raise UserError(f"{config_path} has no 'model_type': pass a Hugging Face model directory")
    return model_type


def load_hf_backend(
    path: Path, *, tokenizer: str | Path | None, device: str, dtype: torch.dtype | None, max_model_len: int | None
) -> HFBackend:
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = _hf_model_type(path)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"{path} holds a '{model_type}' model, which transformers has no causal-LM class for: "
            f"serve a causal language model (e.g. gpt2, llama, qwen2) or a megaphi checkpoint"
        )
    tokenizer = tokenizer if tokenizer is not None else (path if has_tokenizer(path) else None)
    if tokenizer is None:
        raise UserError(f"{path} has no tokenizer: pass --tokenizer <Hugging Face tokenizer directory>")
    target = check_device(device)
    # half-precision matmuls are slow or missing on the CPU; elsewhere the checkpoint's own dtype
    load_dtype = dtype if dtype is not None else torch.float32 if target.type == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=load_dtype)
    # transformers wraps PreTrainedModel.to with functools.wraps, whose type wants ``self`` passed again
    model = model.to(target).eval()  # type: ignore[arg-type]
    return HFBackend(model, load_tokenizer(tokenizer), max_model_len)


def load_backend(
    path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    max_model_len: int | None = None,
) -> Backend:
    """The backend for a megaphi checkpoint, a Hugging Face Phi directory or any HF causal-LM directory.

    ``max_model_len`` caps the context (prompt plus completion); it may not exceed the model's own.
    """
    path = check_model_path(path)
    # legacy phi-1 directories (phi-msft, mixformer-sequential) convert to megaphi's model too
    if is_hf_dir(path) and _hf_model_type(path) not in PHI_MODEL_TYPES:
        return load_hf_backend(path, tokenizer=tokenizer, device=device, dtype=dtype, max_model_len=max_model_len)
    model, tok = load_model(path, device=device, dtype=dtype, tokenizer=tokenizer)
    return MegaphiBackend(model, tok, max_model_len)
