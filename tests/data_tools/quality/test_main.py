"""Bad inputs to `python -m data_tools.quality`: one clear line, exit status 2, before any model is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

from data_tools import embed
from data_tools.quality.documents import text_sha1
from tests.data_tools.quality.conftest import ROOT, filter_args, run_cli, write_jsonl


def annotation(doc_id: str, label: str, text: str | None = None) -> dict:
    return {"id": doc_id, "label": label, "sha1": text_sha1(text) if text else None, "annotator": "test"}


def test_train_names_a_missing_annotation_file(tmp_path, tiny_corpus, capsys):
    code, err = run_cli(
        capsys, "train", "--corpus", tiny_corpus, "--annotations", tmp_path / "nope.jsonl", "--out", tmp_path / "clf"
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "nope.jsonl does not exist" in err and "annotate" in err


def test_train_rejects_annotations_of_another_corpus(tmp_path, tiny_corpus, capsys):
    ann = write_jsonl(tmp_path / "ann.jsonl", [annotation("a.py", "high"), annotation("zz.py", "low")])
    code, err = run_cli(capsys, "train", "--corpus", tiny_corpus, "--annotations", ann, "--out", tmp_path / "clf")
    assert code == 2 and len(err.splitlines()) == 1
    assert "1 of 2 annotations name no document of the corpus (first: 'zz.py')" in err


def test_train_rejects_annotations_of_changed_files(tmp_path, tiny_corpus, capsys):
    ann = write_jsonl(tmp_path / "ann.jsonl", [annotation("a.py", "high", "an older text"), annotation("b.py", "low")])
    code, err = run_cli(capsys, "train", "--corpus", tiny_corpus, "--annotations", ann, "--out", tmp_path / "clf")
    assert code == 2 and "changed text" in err and "'a.py'" in err


def test_train_needs_both_classes(tmp_path, tiny_corpus, capsys):
    ann = write_jsonl(tmp_path / "ann.jsonl", [annotation(i, "low") for i in ("a.py", "b.py", "c.py")])
    code, err = run_cli(capsys, "train", "--corpus", tiny_corpus, "--annotations", ann, "--out", tmp_path / "clf")
    assert code == 2 and len(err.splitlines()) == 1
    assert "all 3 annotated documents are negative" in err and "both classes" in err
    assert not (tmp_path / "clf").exists()


def test_train_rejects_a_failure_log_given_as_annotations(tmp_path, tiny_corpus, capsys):
    log = write_jsonl(tmp_path / "ann.failures.jsonl", [{"id": "a.py", "reason": "rejected: ...", "attempts": 1}])
    code, err = run_cli(capsys, "train", "--corpus", tiny_corpus, "--annotations", log, "--out", tmp_path / "clf")
    assert code == 2 and "not an annotation" in err


def test_bad_positive_labels_and_missing_classifier_are_reported(tmp_path, tiny_corpus, capsys):
    ann = write_jsonl(tmp_path / "ann.jsonl", [annotation("a.py", "high")])
    code, err = run_cli(
        capsys,
        "train",
        "--corpus",
        tiny_corpus,
        "--annotations",
        ann,
        "--out",
        tmp_path / "clf",
        "--positive-labels",
        "great",
    )
    assert code == 2 and "positive labels" in err
    code, err = run_cli(
        capsys, "filter", "--corpus", tiny_corpus, "--classifier", tmp_path, "--output-prefix", tmp_path / "out"
    )
    assert code == 2 and "is not a quality classifier" in err


def test_annotate_needs_unique_document_ids(tmp_path, capsys):
    corpus = write_jsonl(
        tmp_path / "dup.jsonl", [{"text": "A = 1\n", "path": "same.py"}, {"text": "B = 2\n", "path": "same.py"}]
    )
    code, err = run_cli(
        capsys, "annotate", "--annotator", "heuristic", "--corpus", corpus, "--out", tmp_path / "a.jsonl"
    )
    assert code == 2 and "document id 'same.py' occurs twice" in err


def test_cli_help_names_the_three_stages():
    result = subprocess.run(
        [sys.executable, "-m", "data_tools.quality", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert all(stage in result.stdout for stage in ("annotate", "train", "filter", "heuristic"))


@pytest.mark.skipif(embed.cuda_visible(), reason="needs a machine without a CUDA device")
def test_filter_on_cuda_without_a_gpu_is_one_clear_error_before_anything_runs(tmp_path, tiny_corpus, capsys):
    code, err = run_cli(capsys, *filter_args([str(tiny_corpus)], tmp_path, tmp_path / "out"), "--device", "cuda")
    assert code == 2 and len(err.splitlines()) == 1
    assert "--device cuda but this process sees no CUDA device" in err and "--device cpu" in err
    assert list(tmp_path.iterdir()) == [tiny_corpus]
