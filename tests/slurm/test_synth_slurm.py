"""Synthetic generation as a Slurm job array on the two-node local cluster: the same files as a local run."""

import json
import time
from dataclasses import replace

import pytest

from data_tools.executors import ExecutorOptions, SlurmOptions
from data_tools.llm import ClientConfig
from data_tools.synth_run import RunFiles, SynthConfig, synthesize
from tests.data_tools.fake_openai import FakeOpenAI
from tests.data_tools.test_synth_run import fault


@pytest.mark.slow
def test_a_job_array_of_three_tasks_files_what_three_local_tasks_file(slurm_two_nodes, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_two_nodes.env["SLURM_CONF"])  # for datatrove's sbatch calls
    # The fake endpoint listens on 127.0.0.1 in this process; the nodes are this host under other addresses.
    with FakeOpenAI(fault) as server:
        client = ClientConfig(base_url=server.base_url, model="fake", max_attempts=1)
        local = SynthConfig("textbooks", count=12, out=str(tmp_path / "local" / "t.jsonl"), client=client)
        local = replace(local, no_progress=True)
        expected = synthesize(local, ExecutorOptions(tasks=3, workers=3))
        on_slurm = replace(local, out=str(tmp_path / "slurm" / "t.jsonl"))
        slurm = SlurmOptions(partition="debug", time="00:10:00", mem_per_cpu_gb=1, job_name="synth-test")
        assert synthesize(on_slurm, ExecutorOptions(executor="slurm", tasks=3, slurm=slurm)) is None
        summary_path = RunFiles.of(on_slurm).summary
        deadline = time.monotonic() + 300
        while not summary_path.exists():
            assert time.monotonic() < deadline, "the summary job did not finish"
            time.sleep(0.5)
        assert len(server.hits) == 24  # each prompt once per run
    summary = json.loads(summary_path.read_text())
    for name in ("t.jsonl", "t.failures.jsonl"):
        assert (tmp_path / "slurm" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    for key in ("requested", "succeeded", "failed", "rejected", "prompt_tokens", "completion_tokens"):
        assert summary[key] == expected[key], key
    assert [t["requested"] for t in summary["per_task"]] == [4, 4, 4]
