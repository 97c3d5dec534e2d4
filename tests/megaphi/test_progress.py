"""Progress of long stages: a tqdm bar on a terminal, a plain line per interval (and one at the end) in logs."""

import json
import os
import subprocess
import sys

import pytest

from megaphi.progress import ProgressLines, progress

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_in_a_log_a_line_is_written_per_interval_and_one_at_the_end(monkeypatch, capsys):
    monkeypatch.setenv("MEGAPHI_PROGRESS_INTERVAL", "0")
    with progress(total=4, desc="stage", unit="docs") as bar:
        assert isinstance(bar, ProgressLines)  # pytest's stderr is not a terminal
        bar.update(1)
        bar.update(3)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[stage] 1/4 docs (25%), ") and lines[0].endswith(" left")
    assert lines[1].startswith("[stage] 4/4 docs (100%), ")
    assert lines[2].startswith("[stage] 4/4 docs (100%), ") and " docs/s, done in " in lines[2]


def test_a_quick_loop_in_a_log_writes_only_its_final_line(capsys):
    assert list(progress(range(5), desc="quick")) == list(range(5))
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("[quick] 5/5 it (100%), ") and "done in 0s" in line


def test_without_a_total_the_count_stands_alone(monkeypatch, capsys):
    monkeypatch.setenv("MEGAPHI_PROGRESS_INTERVAL", "0")
    for _ in progress(iter("abc"), desc="stream", unit="records"):
        pass
    assert capsys.readouterr().err.splitlines()[-1].startswith("[stream] 3 records, ")


@pytest.mark.parametrize("how", ["disable", "env"])
def test_progress_can_be_switched_off(how, monkeypatch, capsys):
    if how == "env":
        monkeypatch.setenv("MEGAPHI_PROGRESS", "off")
    with progress(total=2, desc="silent", disable=how == "disable") as bar:
        bar.update(2)
    assert capsys.readouterr().err == ""


def test_a_bar_can_be_forced_and_a_bad_setting_is_refused(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setenv("MEGAPHI_PROGRESS", "bar")
    bar = progress(total=1, desc="x")
    bar.close()
    assert isinstance(bar, tqdm)
    monkeypatch.setenv("MEGAPHI_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="MEGAPHI_PROGRESS='fancy' is not one of bar, lines, off"):
        progress(total=1)


def test_a_data_stage_under_a_non_terminal_logs_progress_lines(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"def f{i}():\n    return {i}\n"}) + "\n" for i in range(50)))
    env = {**os.environ, "PYTHONPATH": REPO, "MEGAPHI_PROGRESS_INTERVAL": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "data_tools.dedup", "--input", str(corpus), "--output-prefix", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr  # no bar redrawn in a log
    progress_lines = [line for line in proc.stderr.splitlines() if line.startswith("[dedup] ")]
    assert progress_lines and progress_lines[-1].startswith("[dedup] 50 docs, ") and "done in" in progress_lines[-1]
