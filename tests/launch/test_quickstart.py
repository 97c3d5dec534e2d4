"""The quickstart's rerun path at CI size: its first stages on 28 standard-library files.

A rerun skips what is complete and unchanged and says so; a changed parameter or a damaged output
makes that stage run again, and the stages that read its outputs follow when what they read changed;
--start-at forces a stage; only --fresh deletes the work directory. Every run writes REPORT.md and
report.json with one row per stage and prints the report's path.
"""

import json
import subprocess
import sys

import pytest

from tests.launch.tiny_run import REPO

SLICE = ["--corpus-include", "[b-c]*.py", "--stop-after", "dedup"]


def quickstart(work, *args):
    proc = subprocess.run(
        [sys.executable, "launch/quickstart.py", "--work-dir", str(work), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith(f"report: {work / 'REPORT.md'}")
    report = json.loads((work / "report.json").read_text())
    return {row["stage"]: row for row in report["stages"]}, proc.stdout


def statuses(rows):
    return {name: (row["status"], row["reason"]) for name, row in rows.items()}


@pytest.mark.slow
def test_reruns_skip_what_is_unchanged_and_redo_what_changed(tmp_path):
    work = tmp_path / "quickstart"
    rows, _ = quickstart(work, *SLICE)
    assert statuses(rows) == {name: ("ran", "no record of a finished run") for name in ("corpus", "quality", "dedup")}
    assert rows["corpus"]["counts"]["documents kept"] == 28
    assert rows["quality"]["counts"]["kept"] + rows["quality"]["counts"]["removed (quality score below 0.5)"] == 28
    assert rows["dedup"]["outputs"] == [
        "data/dedup-00000-00000.jsonl",
        "data/dedup.removed.jsonl",
        "data/dedup.dedup.json",
        "data/dedup.datatrove",
    ]
    markdown = (work / "REPORT.md").read_text()
    assert "| 2 | quality | ran (no record of a finished run) |" in markdown
    assert "![quality scores](data/filtered.quality.png)" in markdown and (work / "data/filtered.quality.png").is_file()
    shard = work / "data" / "filtered-00000-00000.jsonl"
    written = shard.stat().st_mtime_ns

    # Unchanged: nothing runs, and the report says why.
    rows, out = quickstart(work, *SLICE)
    assert statuses(rows) == {name: ("skipped", "up to date") for name in ("corpus", "quality", "dedup")}
    assert out.count("skipped: outputs complete, inputs and parameters unchanged") == 3
    assert shard.stat().st_mtime_ns == written

    # A damaged output: that stage runs again; the stages before it are left alone.
    with open(work / "data" / "dedup-00000-00000.jsonl", "a") as f:
        f.write('{"text": "stray"}\n')
    rows, _ = quickstart(work, *SLICE)
    assert statuses(rows)["dedup"] == ("ran", "its outputs changed or went missing since it ran")
    assert {rows[n]["status"] for n in ("corpus", "quality")} == {"skipped"}

    # A new parameter that selects the same files: corpus runs again, writes the same content, and
    # nothing after it has to (keys hold the contents of the inputs, not their times).
    rows, _ = quickstart(work, "--corpus-include", "[bc]*.py", "--stop-after", "dedup")
    assert statuses(rows)["corpus"] == ("ran", "its inputs or parameters changed")
    assert {rows[n]["status"] for n in ("quality", "dedup")} == {"skipped"}

    # --start-at reruns from that stage; the earlier ones are taken as they are.
    rows, _ = quickstart(work, "--corpus-include", "[bc]*.py", "--stop-after", "dedup", "--start-at", "dedup")
    assert statuses(rows) == {
        "corpus": ("skipped", "before --start-at"),
        "quality": ("skipped", "before --start-at"),
        "dedup": ("ran", "--start-at dedup"),
    }

    # Other files: every stage that reads what changed runs again.
    rows, _ = quickstart(work, "--corpus-include", "c*.py", "--stop-after", "dedup")
    assert statuses(rows)["corpus"] == ("ran", "its inputs or parameters changed")
    assert statuses(rows)["quality"] == ("ran", "its inputs or parameters changed")
    assert statuses(rows)["dedup"] == ("ran", "its inputs or parameters changed")
    assert rows["corpus"]["counts"]["documents kept"] == 26

    # Only --fresh deletes: the later stages' records and outputs are gone.
    rows, out = quickstart(work, "--fresh", *SLICE[:2], "--stop-after", "corpus")
    assert f"--fresh: deleting {work}" in out
    assert statuses(rows) == {"corpus": ("ran", "no record of a finished run")}
    assert not (work / "stages" / "quality.json").exists() and not shard.exists()


def test_a_stage_name_that_does_not_exist_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch/quickstart.py", "--work-dir", str(tmp_path), "--start-at", "trainn"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: --start-at 'trainn' is not a stage; give a number 1-12 or one of corpus, quality,")


def test_start_at_refuses_when_an_earlier_stage_never_finished(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "launch/quickstart.py",
            "--work-dir",
            str(tmp_path),
            "--start-at",
            "dedup",
            "--stop-after",
            "dedup",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: stage corpus has no complete outputs to start after; rerun from it (--start-at corpus) "
        "or without --start-at"
    )
