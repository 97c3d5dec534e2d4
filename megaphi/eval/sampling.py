"""Draw benchmark completions from a model: the ``samples.jsonl`` that ``score`` reads."""
from __future__ import annotations

from dataclasses import dataclass

from megaphi.common.errors import UserError
from megaphi.eval.benchmarks import Benchmark


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
            raise UserError(f"--n-samples {self.n_samples} with --temperature 0 draws {self.n_samples} identical "
                             "greedy samples: set --temperature above 0 (e.g. 0.8 for pass@10/100)")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")


def generate_samples(benchmark: Benchmark, model_path: str, sampling: SamplingConfig, *,
                     device: str = "cpu", tokenizer: str | None = None) -> list[dict]:
    """``n_samples`` completions per problem as [{task_id, completion}], problems in benchmark order."""
    from megaphi.generate import generate, load_model  # torch is imported only when generating

    problems = benchmark.problems[: sampling.limit] if sampling.limit else benchmark.problems
    model, tok = load_model(model_path, device=device, tokenizer=tokenizer)
    completions = generate(model, tok, [p.prompt for p in problems], max_new_tokens=sampling.max_new_tokens,
                           temperature=sampling.temperature, top_p=sampling.top_p, n=sampling.n_samples,
                           stop=list(benchmark.stop), seed=sampling.seed, batch_size=sampling.batch_size)
    return [{"task_id": problem.task_id, "completion": completion}
            for problem, per_problem in zip(problems, completions) for completion in per_problem]
