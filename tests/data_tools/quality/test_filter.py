"""The classifier and the corpus filter end to end on the standard library, labelled by the offline annotator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_tools.corpus import build_corpus
from data_tools.corpus_sources import DEFAULT_EXCLUDE, SizeLimits
from data_tools.quality.__main__ import main
from data_tools.quality.classifier import load_classifier
from tests.conftest import read_jsonl
from tests.data_tools.quality.conftest import ROOT, filter_args, run_cli

# A corpus small enough for two shared cores: ~150 standard-library files of 200 B to 12 kB, embedded
# by their first 256 characters.
STDLIB_INCLUDE = ("[a-f]*",)
STDLIB_EXCLUDE = DEFAULT_EXCLUDE + ("*/test/*", "*/tests/*", "*/idlelib/*")
EMBED_MAX_CHARS = 256


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """corpus -> heuristic annotate -> train (MiniLM + random forest) -> filter as one task, via the CLI."""
    tmp = tmp_path_factory.mktemp("quality")
    build_corpus(
        [],
        tmp / "stdlib",
        include=STDLIB_INCLUDE,
        exclude=STDLIB_EXCLUDE,
        limits=SizeLimits(200, 12_000),
        shard_bytes=150_000,
        progress=False,
    )
    corpus = str(tmp / "stdlib-*.jsonl")
    assert main(["annotate", "--annotator", "heuristic", "--corpus", corpus, "--out", str(tmp / "ann.jsonl")]) == 0
    assert (
        main(
            [
                "train",
                "--corpus",
                corpus,
                "--annotations",
                str(tmp / "ann.jsonl"),
                "--out",
                str(tmp / "clf"),
                "--embed-max-chars",
                str(EMBED_MAX_CHARS),
                "--n-estimators",
                "100",
                "--threshold",
                "0.6",
            ]
        )
        == 0
    )
    assert main(filter_args([corpus], tmp / "clf", tmp / "edu")) == 0
    return tmp


@pytest.fixture(scope="module")
def classifier(pipeline):
    return load_classifier(pipeline / "clf")


@pytest.fixture(scope="module")
def three_tasks(pipeline):
    """The same filter split into three tasks (run one after another in this process), smaller batches,
    and the removed documents written too."""
    prefix = pipeline / "three" / "edu"
    argv = filter_args([str(pipeline / "stdlib-*.jsonl")], pipeline / "clf", prefix, "--tasks", "3", "--workers", "1")
    assert main([*argv, "--batch-size", "16", "--removed-prefix", str(pipeline / "three" / "removed")]) == 0
    return prefix


def corpus_records(pipeline: Path) -> list[dict]:
    return read_jsonl(*sorted(pipeline.glob("stdlib-*.jsonl")))


def shards_of(prefix: Path) -> list[Path]:
    return sorted(prefix.parent.glob(f"{prefix.name}-*.jsonl"))


@pytest.mark.slow
def test_training_reports_held_out_metrics_that_match_the_saved_classifier(pipeline, classifier):
    meta = json.loads((pipeline / "clf" / "classifier.json").read_text())
    annotations = {r["id"]: r for r in read_jsonl(pipeline / "ann.jsonl")}
    assert meta["embedder"] == "minilm" and meta["embedding_dim"] == 384 and meta["threshold"] == 0.6
    assert meta["train_size"] + meta["test_size"] == len(annotations) > 100
    assert meta["annotators"] == {"heuristic-v1": len(annotations)}

    # Re-score the held-out files with the saved classifier and count the confusion matrix by hand.
    corpus = {r["id"]: r["text"] for r in corpus_records(pipeline)}
    scores = classifier.score([corpus[i] for i in meta["test_ids"]])
    predicted = scores >= meta["threshold"]
    truth = np.array([annotations[i]["label"] in meta["positive_labels"] for i in meta["test_ids"]])
    m = meta["metrics"]
    assert m["true_positives"] == int((predicted & truth).sum())
    assert m["false_positives"] == int((predicted & ~truth).sum())
    assert m["false_negatives"] == int((~predicted & truth).sum())
    assert m["support"] == int(truth.sum())
    assert m["precision"] == pytest.approx(m["true_positives"] / max(1, predicted.sum()))
    assert m["recall"] == pytest.approx(m["true_positives"] / truth.sum())
    assert m["f1"] == pytest.approx(2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"]))
    assert 0.0 <= m["roc_auc"] <= 1.0


@pytest.mark.slow
def test_filter_keeps_exactly_the_files_scored_at_or_above_the_threshold(pipeline, classifier):
    report = json.loads((pipeline / "edu.quality.json").read_text())
    inputs = sorted(pipeline.glob("stdlib-*.jsonl"))
    corpus = corpus_records(pipeline)
    kept = read_jsonl(*shards_of(pipeline / "edu"))

    # The oracle is the filter as it was before it ran on datatrove: each corpus file scored in
    # batches of 64 documents, in corpus order, keeping the documents at or above the threshold.
    expected = []
    for path in inputs:
        records = read_jsonl(path)
        for start in range(0, len(records), 64):
            batch = records[start : start + 64]
            scores = classifier.score([r["text"] for r in batch])
            expected += [(r["id"], round(float(s), 6)) for r, s in zip(batch, scores, strict=True) if s >= 0.6]
    assert [(r["id"], r["quality_score"]) for r in kept] == expected
    assert 0 < len(kept) < len(corpus)

    assert report["documents"] == len(corpus) == sum(report["histogram"]["counts"])
    assert report["kept"] == len(kept) and report["removed"] == len(corpus) - len(kept)
    assert report["removed_by_reason"] == {"score_below_threshold": len(corpus) - len(kept)}
    assert report["kept_fraction"] == pytest.approx(len(kept) / len(corpus))
    assert report["threshold"] == 0.6 and report["embedder"] == "minilm"
    [task] = report["tasks"]
    assert task["inputs"] == [str(p) for p in inputs] and task["outputs"] == report["outputs"]
    assert (task["documents"], task["kept"], task["device"]) == (len(corpus), len(kept), "cpu")

    # Kept records are the input records plus their score.
    by_id = {r["id"]: r for r in corpus}
    assert all({k: v for k, v in r.items() if k != "quality_score"} == by_id[r["id"]] for r in kept)
    assert (pipeline / "edu.quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_three_tasks_keep_the_same_documents_as_one_and_report_each_task(pipeline, three_tasks):
    one = read_jsonl(*shards_of(pipeline / "edu"))
    three = read_jsonl(*shards_of(three_tasks))
    corpus = corpus_records(pipeline)
    assert sorted(r["id"] for r in three) == sorted(r["id"] for r in one)
    assert {r["id"]: r["quality_score"] for r in three} == pytest.approx(
        {r["id"]: r["quality_score"] for r in one}, abs=1e-5
    )

    # Removed documents are written with their score and reason: kept + removed is the corpus, once.
    removed = read_jsonl(*shards_of(pipeline / "three" / "removed"))
    assert sorted(r["id"] for r in removed + three) == sorted(r["id"] for r in corpus)
    assert {r["filter_reason"] for r in removed} == {"score_below_threshold"}
    assert all(r["quality_score"] < 0.6 for r in removed) and all(r["quality_score"] >= 0.6 for r in three)

    # The per-task view: each task read its share of the input files and wrote its own shards; the
    # tasks add up to the totals, and the histogram is the one of the single-task run.
    report = json.loads((three_tasks.parent / "edu.quality.json").read_text())
    inputs = [str(p) for p in sorted(pipeline.glob("stdlib-*.jsonl"))]
    assert [t["rank"] for t in report["tasks"]] == [0, 1, 2]
    assert sorted(path for t in report["tasks"] for path in t["inputs"]) == inputs  # each file by one task
    assert all(t["inputs"] for t in report["tasks"])
    for task in report["tasks"]:
        task_ids = {r["id"] for path in task["inputs"] for r in read_jsonl(path)}
        kept_ids = {r["id"] for path in task["outputs"] for r in read_jsonl(path)}
        assert task["documents"] == len(task_ids) and task["kept"] == len(kept_ids) and kept_ids <= task_ids
        assert task["removed_by_reason"] == {"score_below_threshold": task["removed"]}
        assert task["batch_size"] == 16
    assert sum(t["documents"] for t in report["tasks"]) == report["documents"] == len(corpus)
    assert report["kept"] == len(three) and report["removed_outputs"] == [
        str(p) for p in shards_of(pipeline / "three" / "removed")
    ]
    single = json.loads((pipeline / "edu.quality.json").read_text())
    assert report["histogram"] == single["histogram"]


@pytest.mark.slow
def test_a_rerun_continues_the_run_it_finds_and_refuses_other_settings(pipeline, three_tasks, capsys):
    report = three_tasks.parent / "edu.quality.json"
    written = report.stat().st_mtime_ns
    argv = filter_args([str(pipeline / "stdlib-*.jsonl")], pipeline / "clf", three_tasks, "--tasks", "3")
    argv += ["--workers", "1", "--batch-size", "16", "--removed-prefix", str(pipeline / "three" / "removed")]
    # Every task finished: nothing runs again, and the summary is the finished run's.
    assert main(argv) == 0
    assert report.stat().st_mtime_ns == written
    assert capsys.readouterr().out.startswith(f"kept {json.loads(report.read_text())['kept']} of ")
    # Another threshold would keep other documents under the same prefix: refused, nothing touched.
    code, err = run_cli(capsys, *argv, "--threshold", "0.7")
    assert code == 2 and len(err.splitlines()) == 1 and "holds a" in err and "run" in err
    assert report.stat().st_mtime_ns == written


@pytest.mark.slow
def test_a_killed_filter_task_is_the_only_one_a_rerun_runs(pipeline, tmp_path):
    """Kill the command while its second task runs; the rerun runs only the two unfinished tasks (two at
    a time) and keeps what the one-task run kept of the same files."""
    inputs = sorted(pipeline.glob("stdlib-*.jsonl"))[:3]
    prefix = tmp_path / "edu"
    argv = [sys.executable, "-m", "data_tools.quality"]
    argv += filter_args([str(p) for p in inputs], pipeline / "clf", prefix, "--tasks", "3")
    done = Path(f"{prefix}.datatrove/quality-filter/completions")
    proc = subprocess.Popen(
        [*argv, "--workers", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not (done / "00000").exists():
            assert proc.poll() is None, "the filter ended before its first task finished"
            time.sleep(0.05)
    finally:  # as a scheduler ends a job: the command and every process it started
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert sorted(p.name for p in done.iterdir()) == ["00000"]
    assert [p.name for p in shards_of(prefix)] == ["edu-00000-00000.jsonl"]  # nothing of the killed task
    first_scores = Path(f"{prefix}.datatrove/quality-filter/scores/00000.json")
    written = first_scores.stat().st_mtime_ns

    rerun = subprocess.run([*argv, "--workers", "2"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "quality-filter: 3 task(s) done (1 done before)" in rerun.stderr
    assert first_scores.stat().st_mtime_ns == written
    assert sorted(p.name for p in done.iterdir()) == ["00000", "00001", "00002"]
    kept = sorted(r["id"] for r in read_jsonl(*shards_of(prefix)))
    ids = {r["id"] for r in read_jsonl(*inputs)}
    assert kept == sorted(r["id"] for r in read_jsonl(*shards_of(pipeline / "edu")) if r["id"] in ids)
    assert json.loads(Path(f"{prefix}.quality.json").read_text())["kept"] == len(kept)
