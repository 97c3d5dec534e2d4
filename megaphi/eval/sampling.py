"""Draw benchmark completions from a model: the ``samples.jsonl`` that ``score`` reads."""

from __future__ import annotations

from dataclasses import dataclass

from megaphi.common.errors import UserError
from megaphi.eval.benchmarks import Benchmark

# A sample field: why the sample has no completion (its prompt does not fit the model's context).
NOT_GENERATED = "not_generated"


@dataclass(frozen=True)
class SamplingConfig:
    n_samples: int = 1
    temperature: float = 0.0  # 0 is greedy, phi-1's pass@1 setting
    top_p: float = 1.0
    max_new_tokens: int = 512
    batch_size: int = 16
    seed: int | None = 0
    limit: int | None = None  # only the first N problems (smoke tests)

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise UserError(f"--n-samples must be at least 1, got {self.n_samples}")
        if self.n_samples > 1 and self.temperature == 0:
            raise UserError(
                f"--n-samples {self.n_samples} with --temperature 0 draws {self.n_samples} identical "
                "greedy samples: set --temperature above 0 (e.g. 0.8 for pass@10/100)"
            )
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")


def context_budgets(prompt_lengths: list[int], context: int, max_new_tokens: int) -> list[int]:
    """New tokens each prompt may have: ``max_new_tokens``, or what the context leaves (0: none fit)."""
    return [max(0, min(max_new_tokens, context - length)) for length in prompt_lengths]


def generate_samples(
    benchmark: Benchmark,
    model_path: str,
    sampling: SamplingConfig,
    *,
    device: str = "cpu",
    tokenizer: str | None = None,
) -> list[dict]:
    """``n_samples`` completions per problem as [{task_id, completion}], problems in benchmark order.

    A prompt that leaves the model's context too little room gets the room there is; one that fills the
    context is not generated: its samples carry ``NOT_GENERATED`` with the reason and score as failed.
    """
    from megaphi.generate import generate, load_model  # torch is imported only when generating

    problems = benchmark.problems[: sampling.limit] if sampling.limit else benchmark.problems
    model, tok = load_model(model_path, device=device, tokenizer=tokenizer)
    context = model.config.max_position_embeddings
    lengths = [len(tok.encode(p.prompt)) for p in problems]
    budgets = context_budgets(lengths, context, sampling.max_new_tokens)
    completions: dict[int, list[str]] = {}
    # One generate call per budget: most prompts share the full max_new_tokens.
    for budget in sorted(set(budgets) - {0}, reverse=True):
        group = [i for i, b in enumerate(budgets) if b == budget]
        texts = generate(
            model,
            tok,
            [problems[i].prompt for i in group],
            max_new_tokens=budget,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            n=sampling.n_samples,
            stop=list(benchmark.stop),
            seed=sampling.seed,
            batch_size=sampling.batch_size,
            show_progress=True,
        )
        completions.update(zip(group, texts))
    samples = []
    for i, problem in enumerate(problems):
        if budgets[i] == 0:
            reason = (
                f"not generated: the prompt has {lengths[i]} tokens and the model's context is {context}, "
                f"leaving no room for a completion"
            )
            samples += [{"task_id": problem.task_id, "completion": "", NOT_GENERATED: reason}] * sampling.n_samples
        else:
            samples += [{"task_id": problem.task_id, "completion": c} for c in completions[i]]
    return samples


def not_generated_results(samples: list[dict], scored: list[dict]) -> list[dict]:
    """All samples' results in order: ``scored`` for those that ran, a failure with its reason for the
    samples that ``generate_samples`` could not generate (nothing of theirs runs)."""
    scored_iter = iter(scored)
    return [
        {
            "task_id": s["task_id"],
            "completion": s["completion"],
            "passed": False,
            "result": f"failed: {s[NOT_GENERATED]}",
            "output": "",
        }
        if NOT_GENERATED in s
        else next(scored_iter)
        for s in samples
    ]
