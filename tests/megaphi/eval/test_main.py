"""`python -m megaphi.eval generate|score|run` end to end, on a tiny random model (pass@1 is 0 there)."""

import json
import subprocess
import sys

import pytest
import torch

from megaphi.convert import convert_from_hf
from megaphi.eval import sandbox
from megaphi.eval.__main__ import main
from megaphi.eval.benchmarks import HUMANEVAL_STOP, load_humaneval
from tests.conftest import read_jsonl
from tests.megaphi.eval.test_benchmarks import MBPP_PATH, needs_mbpp
from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    tokenizer = make_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    path = tmp_path_factory.mktemp("hf")
    make_hf_phi(path, tokenizer_dir=tokenizer, seed=1, max_position_embeddings=2048)
    return path


@pytest.fixture(scope="module")
def megaphi_checkpoint(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tp2"
    convert_from_hf(hf_model, path, tensor_parallel_size=2)
    return path


def last_json_line(text):
    return json.loads(text.strip().splitlines()[-1])


def args(command: str, **options: object) -> list[str]:
    """The arguments of ``python -m megaphi.eval COMMAND``: an option ``n_samples=2`` is ``--n-samples 2``."""
    argv = [command]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


@pytest.mark.slow
def test_generate_writes_one_sample_per_problem_cut_at_the_stop_sequences(hf_model, tmp_path):
    out = tmp_path / "samples.jsonl"
    assert main(args("generate", model=hf_model, benchmark="humaneval", limit=2, max_new_tokens=24, out=out)) == 0
    samples = read_jsonl(out)
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    for sample in samples:
        assert isinstance(sample["completion"], str)
        assert not any(stop in sample["completion"] for stop in HUMANEVAL_STOP)


@pytest.mark.slow
def test_run_generates_scores_and_reports_from_a_tensor_parallel_checkpoint(megaphi_checkpoint, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    sampling = dict(n_samples=2, temperature=0.8, top_p=0.95, max_new_tokens=16)
    options = dict(benchmark="humaneval", limit=2, **sampling, sandbox_timeout=5, out_dir=out_dir)
    code = main(args("run", model=megaphi_checkpoint, **options))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = last_json_line(captured.out)
    assert summary["pass@1"] == 0.0 and summary["samples"] == 4 and summary["problems_scored"] == 2
    assert "samples cover 2 of 164" in captured.err
    results = read_jsonl(out_dir / "results.jsonl")
    assert [r["task_id"] for r in results] == ["HumanEval/0"] * 2 + ["HumanEval/1"] * 2
    assert all(set(r) >= {"task_id", "completion", "passed", "result"} and not r["passed"] for r in results)
    assert len(read_jsonl(out_dir / "samples.jsonl")) == 4
    report = json.loads((out_dir / "report.json").read_text())
    assert [p["task_id"] for p in report["problems"]] == ["HumanEval/0", "HumanEval/1"]
    assert "| HumanEval/1 | 2 | 0 | 0.000 |" in (out_dir / "report.md").read_text()


@pytest.mark.slow
def test_problems_longer_than_the_context_score_as_failed_with_the_reason(tmp_path, capsys):
    # With the tiny tokenizer HumanEval/0..2 have 292, 434 and 269 prompt tokens; the context is 300.
    model = tmp_path / "short-context"
    make_hf_phi(model, tokenizer_dir=make_tokenizer(tmp_path / "tok"), seed=1, max_position_embeddings=300)
    out_dir = tmp_path / "eval"
    code = main(
        args("run", model=model, benchmark="humaneval", limit=3, max_new_tokens=16, sandbox_timeout=5, out_dir=out_dir)
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = last_json_line(captured.out)
    assert summary["not_generated"] == 1 and summary["samples"] == 3 and summary["problems_scored"] == 3
    assert "1 samples were not generated" in captured.err
    assert "[generate] 1/1 samples (100%)" in captured.err  # progress, one line per generate call in a log
    assert "[score] 2/2 programs (100%)" in captured.err  # only the generated samples run
    results = {r["task_id"]: r for r in read_jsonl(out_dir / "results.jsonl")}
    assert results["HumanEval/1"]["result"] == (
        "failed: not generated: the prompt has 434 tokens and the model's "
        "context is 300, leaving no room for a completion"
    )
    assert not results["HumanEval/1"]["passed"] and results["HumanEval/1"]["completion"] == ""
    # a prompt that leaves less room than --max-new-tokens gets the room there is (8 of 16 tokens)
    for task in ("HumanEval/0", "HumanEval/2"):
        assert results[task]["completion"] and "not generated" not in results[task]["result"]
    assert "not generated: the prompt has 434 tokens" in (out_dir / "report.md").read_text()


@needs_mbpp
@pytest.mark.slow
def test_generate_reads_mbpp_from_the_given_file(hf_model, tmp_path):
    out = tmp_path / "samples.jsonl"
    options = dict(benchmark="mbpp", mbpp_path=MBPP_PATH, limit=1, max_new_tokens=8, out=out)
    assert main(args("generate", model=hf_model, **options)) == 0
    assert [s["task_id"] for s in read_jsonl(out)] == ["Mbpp/11"]


def test_score_prints_the_summary_and_writes_one_result_per_sample(tmp_path, capsys):
    problems = load_humaneval().problems[:3]
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"task_id": p.task_id, "completion": c}) + "\n"
            for p in problems
            for c in (p.reference, "    raise SystemExit(0)\n")
        )
    )
    results_path = tmp_path / "results.jsonl"
    assert main(args("score", benchmark="humaneval", samples=samples, out=results_path)) == 0
    summary = last_json_line(capsys.readouterr().out)
    assert summary["pass@1"] == pytest.approx(0.5) and "pass@10" not in summary
    results = read_jsonl(results_path)
    assert [r["passed"] for r in results] == [True, False] * 3
    assert results[1]["result"] == "failed: the candidate exited during a call (SystemExit: 0)"


def test_score_refuses_without_a_sandbox_unless_told_to_run_unsafely(tmp_path, capsys, monkeypatch):
    problem = load_humaneval().problems[0]
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": problem.task_id, "completion": problem.reference}) + "\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    sandbox._sandbox_problem.cache_clear()
    try:
        argv = args("score", benchmark="humaneval", samples=samples, out=tmp_path / "r.jsonl")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "bubblewrap" in err and "--unsafe-no-sandbox" in err
        with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
            assert main(argv + ["--unsafe-no-sandbox"]) == 0
        assert last_json_line(capsys.readouterr().out)["pass@1"] == 1.0
    finally:
        sandbox._sandbox_problem.cache_clear()


@pytest.mark.parametrize(
    "argv,message",
    [
        (args("generate", model="m", benchmark="humaneval", n_samples=3, out="s.jsonl"), "identical greedy samples"),
        (args("run", model="m", benchmark="humaneval", limit=0, out_dir="d"), "--limit must be"),
        (args("score", benchmark="humaneval", samples="missing.jsonl", out="r.jsonl"), "missing.jsonl does not exist"),
        (
            args("score", benchmark="humaneval", samples="s.jsonl", out="r.jsonl", workers=0),
            "--workers must be at least 1",
        ),
        (args("generate", model="no/such/model", benchmark="humaneval", out="s.jsonl"), "no/such/model"),
        (args("run", model="m", benchmark="humaneval", out_dir="afile"), "--out-dir afile is a file"),
    ],
)
def test_bad_input_gets_one_error_line_and_exit_status_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_missing_tokenizer_or_device_is_one_error_line(hf_model, tmp_path, capsys):
    base = args("generate", model=hf_model, benchmark="humaneval", limit=1, out=tmp_path / "s.jsonl")
    assert main(base + ["--tokenizer", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith(f"error: tokenizer {tmp_path / 'nope'} does not exist")
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda"]) == 2
        assert capsys.readouterr().err.startswith("error: device cuda is not available on this machine")


def test_every_subcommand_documents_itself():
    for command in ([], ["generate"], ["score"], ["run"]):
        out = subprocess.run(
            [sys.executable, "-m", "megaphi.eval", *command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert out.startswith("usage: python -m megaphi.eval")


def test_sandbox_limits_are_named_as_in_synth_and_the_older_names_still_work():
    from megaphi.eval.__main__ import build_parser

    common = args("score", benchmark="humaneval", samples="s.jsonl", out="r.jsonl")
    new = build_parser().parse_args(common + ["--sandbox-timeout", "3", "--sandbox-memory-mb", "512"])
    old = build_parser().parse_args(common + ["--timeout", "3", "--memory-mb", "512"])
    assert (new.timeout, new.memory_mb) == (old.timeout, old.memory_mb) == (3.0, 512)


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_model_that_is_no_model_is_refused_saying_both_kinds_work(tmp_path, capsys, kind):
    model = tmp_path / "model"
    if kind == "empty":
        model.mkdir()
    assert main(args("run", benchmark="humaneval", model=model, out_dir=tmp_path / "out", limit=1)) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {'model ' if kind == 'missing' else ''}{model} is ")
    assert "megaphi checkpoint" in line and "Hugging Face model directory" in line


@pytest.mark.parametrize("flag, value", [("--sandbox-timeout", "0"), ("--sandbox-memory-mb", "-1")])
def test_a_sandbox_limit_that_is_not_positive_is_one_error_line_naming_the_flag(tmp_path, capsys, flag, value):
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return []\\n"}\n')
    assert main(args("score", benchmark="humaneval", samples=samples, out=tmp_path / "r.jsonl") + [flag, value]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {flag} must be positive, got {float(value) if 'timeout' in flag else value}\n"
    )
