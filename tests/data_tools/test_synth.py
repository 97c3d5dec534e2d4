import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from data_tools.llm import ClientConfig
from data_tools.synth import main
from data_tools.synth_run import SynthConfig, synthesize
from megaphi.common.net import free_port
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]


def textbooks_command(tmp_path: Path, base_url: str, count: int, *flags: str) -> int:
    """``python -m data_tools.synth textbooks --count COUNT FLAGS`` in this process, into tmp_path/t.jsonl."""
    out = str(tmp_path / "t.jsonl")
    return main(["textbooks", "--count", str(count), "--out", out, "--base-url", base_url, "--no-progress", *flags])


def test_the_run_prints_its_prompt_count_before_asking_and_warns_when_count_exceeds_it(tmp_path, capsys):
    prompts = tmp_path / "small.yaml"
    prompts.write_text(
        "system: s\ntemplate: '{topic} {subtopic} {audience} {style}'\n"
        "topics: [{name: a, subtopics: [b, c]}]\naudiences: [x, x]\nstyles: [y]\n"
    )  # x once
    with FakeOpenAI(lambda prompt, attempt: "400") as server:
        code = textbooks_command(
            tmp_path, server.base_url, 6, "--warn-repeats", "2.5", "--prompts", str(prompts), "--max-attempts", "1"
        )
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(server.hits) == 6
    assert err[0] == (
        "prompt space: 2 distinct textbooks prompts (lists: 2 topic/subtopic x 1 audiences x 1 styles); 6 requested"
    )
    assert err[1].startswith(
        "warning: 6 requested is 3.0x the 2 distinct prompts (more than --warn-repeats 2.5): "
        "each prompt is sent up to 3 times"
    )


def test_truncated_textbooks_are_rejected_unless_kept(tmp_path):
    with FakeOpenAI(lambda prompt, attempt: "length") as server:
        client = ClientConfig(base_url=server.base_url, model="fake", max_attempts=1)
        summary = synthesize(
            SynthConfig(
                "textbooks", count=2, out=str(tmp_path / "a.jsonl"), failures=str(tmp_path / "a.f.jsonl"), client=client
            )
        )
        kept = synthesize(
            SynthConfig(
                "textbooks",
                count=2,
                out=str(tmp_path / "b.jsonl"),
                failures=str(tmp_path / "b.f.jsonl"),
                client=client,
                keep_truncated=True,
            )
        )
    assert summary["rejected"] == 2 and "truncated at max_tokens=1024" in (tmp_path / "a.f.jsonl").read_text()
    records = read_jsonl(tmp_path / "b.jsonl")
    assert kept["succeeded"] == 2 and all(r["text"].startswith("answer to: Write a section") for r in records)
    assert set(records[0]["meta"]) == {"topic", "subtopic", "audience", "style", "prompt_sha1"}


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    code = main(
        ["exercises", "--count", "0", "--out", str(tmp_path / "x.jsonl"), "--base-url", "http://127.0.0.1:9/v1"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: count must be at least 1, got 0"
    code = textbooks_command(tmp_path, "http://127.0.0.1:9/v1", 1, "--prompts", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml does not exist" in capsys.readouterr().err
    code = main(["textbooks", "--count", "1", "--out", str(tmp_path / "x.jsonl"), "--seed-pool", "5"])
    assert code == 2 and capsys.readouterr().err == (
        "error: --seed-pool and --seed-kinds shape seed-conditioned prompts: add --seed-corpus\n"
    )
    code = textbooks_command(tmp_path, "http://127.0.0.1:9/v1", 1, "--seed-corpus", str(tmp_path / "none-*.jsonl"))
    assert code == 2 and capsys.readouterr().err.startswith("error: seed corpus: input ")
    with pytest.raises(SystemExit):  # argparse: one prompt source at a time
        main(["textbooks", "--count", "1", "--out", str(tmp_path / "x.jsonl"), "--outline", "o.yaml", "--seed-corpus"])
    assert "argument --seed-corpus: not allowed with argument --outline" in capsys.readouterr().err


def test_cli_exits_1_when_no_request_got_an_answer(tmp_path, capsys):
    with FakeOpenAI(lambda prompt, attempt: "400") as server:
        code = textbooks_command(tmp_path, server.base_url, 2, "--model", "fake", "--api-key", "x")
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: every request failed (reasons in ")
    assert len((tmp_path / "t.failures.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_generate_validate_write_runs_against_megaphi_serve_with_a_tiny_model(tmp_path, capsys):
    from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer

    model_dir = tmp_path / "tiny"
    make_tokenizer(model_dir)
    make_hf_phi(model_dir, tokenizer_dir=model_dir, max_position_embeddings=2048)
    port = free_port("127.0.0.1")
    server = subprocess.Popen(
        [sys.executable, "-m", "megaphi.serve", "--model", str(model_dir), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "megaphi.serve did not come up"
                time.sleep(0.2)
        code = main(
            [
                "exercises",
                "--count",
                "3",
                "--out",
                str(tmp_path / "ex.jsonl"),
                "--base-url",
                f"http://127.0.0.1:{port}/v1",
                "--model",
                "tiny",
                "--max-tokens",
                "24",
                "--no-progress",
            ]
        )
        assert code == 0
        textbooks = synthesize(
            SynthConfig(
                "textbooks",
                count=2,
                out=str(tmp_path / "tb.jsonl"),
                max_tokens=16,
                keep_truncated=True,
                client=ClientConfig(base_url=f"http://127.0.0.1:{port}/v1", model="tiny"),
                no_progress=True,
            )
        )
    finally:
        server.terminate()
        server.wait(30)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["requested"] == 3 and summary["rejected"] == 3 and summary["completion_tokens"] > 0
    # The random model writes garbage: every exercise is rejected, each with a reason, none kept.
    assert (tmp_path / "ex.jsonl").read_text() == ""
    failures = read_jsonl(tmp_path / "ex.failures.jsonl")
    assert len(failures) == 3 and all(f["reason"].startswith("rejected: ") and f["texts"] for f in failures)
    # Sampling may end a text at the end-of-text token before the cap; none runs past it.
    assert textbooks["succeeded"] == 2 and 2 <= textbooks["completion_tokens"] <= 2 * 16
    assert len(read_jsonl(tmp_path / "tb.jsonl")) == 2
