"""The educational-value filter: label parsing, LLM and offline annotation, classifier, corpus filter."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_tools import embed
from data_tools.corpus import build_corpus
from data_tools.corpus_sources import DEFAULT_EXCLUDE, SizeLimits
from data_tools.embed import EmbedderError, load_embedder, resolve_device
from data_tools.llm import ClientConfig
from data_tools.quality import heuristic
from data_tools.quality.__main__ import main
from data_tools.quality.annotate import AnnotateOptions, annotate_with_heuristic, annotate_with_llm, failures_path_for
from data_tools.quality.classifier import load_classifier
from data_tools.quality.documents import text_sha1
from data_tools.quality.labels import Label, UnparseableLabel, parse_label
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
# A corpus small enough for two shared cores: ~150 standard-library files of 200 B to 12 kB, embedded
# by their first 256 characters.
STDLIB_INCLUDE = ("[a-f]*",)
STDLIB_EXCLUDE = DEFAULT_EXCLUDE + ("*/test/*", "*/tests/*", "*/idlelib/*")
EMBED_MAX_CHARS = 256


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------------
# Reading a label out of an answer


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("high", Label("high")),
        ("The code is tidy.\n\nEducational value: **Medium**", Label("medium")),
        ("It has few comments, so not high; the value is low.", Label("low")),
        ("Rating: 4/5 - clear names and docstrings.", Label("high", 4)),
        ("I would give this 2 out of 5.", Label("low", 2)),
        ("  3  ", Label("medium", 3)),
        ("Score: 5.", Label("high", 5)),
        ("This is of moderate use to a beginner.", Label("medium")),
        ("At first glance the value looks high, but on reflection...\nEducational value: low", Label("low")),
    ],
)
def test_parse_label_reads_levels_and_scores_from_chatty_answers(answer, expected):
    assert parse_label(answer) == expected


@pytest.mark.parametrize(
    "answer", ["It depends on the student.", "Parts are high quality, parts are low quality.", "7", ""]
)
def test_parse_label_refuses_to_guess(answer):
    with pytest.raises(UnparseableLabel, match="no educational-value level"):
        parse_label(answer)


# ---------------------------------------------------------------------------------------------
# Annotation


def small_corpus(tmp_path: Path, texts: dict[str, str]) -> Path:
    return write_jsonl(
        tmp_path / "corpus-00000.jsonl",
        [{"text": text, "path": path, "lang": "python", "meta": {}} for path, text in texts.items()],
    )


def scripted_answer(prompt: str) -> str:
    if "MARK_HIGH" in prompt:
        return "Clear docstrings and small functions.\nEducational value: High"
    if "MARK_SCORE" in prompt:
        return "I'd rate this 2/5: it is mostly constants."
    if "MARK_CHATTY" in prompt:
        return "Honestly this is of moderate use for learners."
    return "It depends on the student."


def test_llm_annotation_stores_labels_with_raw_answers_and_files_unparseable_ones_as_failures(tmp_path, capsys):
    corpus = small_corpus(
        tmp_path,
        {"a.py": "# MARK_HIGH\n", "b.py": "X = 1  # MARK_SCORE\n", "c.py": "# MARK_CHATTY\n", "d.py": "# MARK_NONE\n"},
    )
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Rate {path} for learners:\n{code}\n")
    out = tmp_path / "annotations.jsonl"
    with FakeOpenAI(answer=scripted_answer) as server:
        config = ClientConfig(base_url=server.base_url, api_key="test", model="judge", max_attempts=1)
        stats = annotate_with_llm([corpus], out, config, prompt_path=prompt, progress=False)
        rerun = main(
            [
                "annotate",
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                "--prompt",
                str(prompt),
                "--no-progress",
                "--base-url",
                server.base_url,
                "--api-key",
                "test",
                "--model",
                "judge",
            ]
        )
        asked = server.hits_by_prompt()

    assert (stats.succeeded, stats.failed) == (3, 1)
    annotations = {r["id"]: r for r in read_jsonl(out)}
    assert {i: (r["label"], r["score"]) for i, r in annotations.items()} == {
        "a.py": ("high", None),
        "b.py": ("low", 2),
        "c.py": ("medium", None),
    }
    assert annotations["b.py"]["raw"] == scripted_answer("MARK_SCORE")
    assert annotations["a.py"]["annotator"] == "llm:judge"
    assert annotations["a.py"]["sha1"] == text_sha1("# MARK_HIGH\n")
    [failure] = read_jsonl(failures_path_for(out))
    assert failure["id"] == "d.py" and "no educational-value level" in failure["reason"]
    assert failure["texts"] == ["It depends on the student."]
    # The prompt file is the template; every file was asked exactly once, the rerun asked nothing.
    assert "Rate c.py for learners:\n# MARK_CHATTY\n\n" in asked
    assert sorted(len(faults) for faults in asked.values()) == [1, 1, 1, 1]
    assert rerun == 0 and "4 files: 0 annotated, 0 failed, 3 done before, 1 failed before" in capsys.readouterr().out


def test_heuristic_prefers_documented_small_functions_over_generated_data_tables():
    teaching = '''"""Binary search, step by step."""


def binary_search(items, target):
    """Return the index of target in the sorted list items, or -1."""
    low, high = 0, len(items) - 1
    while low <= high:
        middle = (low + high) // 2  # look in the middle of what is left
        if items[middle] == target:
            return middle
        if items[middle] < target:
            low = middle + 1  # the target can only be on the right
        else:
            high = middle - 1
    return -1
'''
    generated = (
        "# Auto-generated by gen_tables.py. DO NOT EDIT.\nTABLE = {\n"
        + "".join(f"    {i}: {i * i},\n" for i in range(200))
        + "}\n"
    )
    assert heuristic.annotate_text(teaching)[0].level == "high"
    assert heuristic.annotate_text(generated)[0].level == "low"
    assert heuristic.annotate_text("def broken(:\n")[0].level == "low"
    assert json.loads(heuristic.annotate_text(generated)[1])["generated"] is True


def test_heuristic_annotation_samples_with_a_seed_and_resumes(tmp_path):
    corpus = small_corpus(tmp_path, {f"m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(10)})
    out = tmp_path / "ann.jsonl"
    first = annotate_with_heuristic([corpus], out, options=AnnotateOptions(limit=4, seed=1))
    ids = [r["id"] for r in read_jsonl(out)]
    assert first.succeeded == 4 and len(set(ids)) == 4
    again = annotate_with_heuristic([corpus], out, options=AnnotateOptions(limit=4, seed=1))
    assert (again.already_done, again.succeeded) == (4, 0)
    assert {r["annotator"] for r in read_jsonl(out)} == {"heuristic-v1"}


# ---------------------------------------------------------------------------------------------
# Bad inputs: one clear line, exit status 2, before any model is loaded


@pytest.fixture
def tiny_corpus(tmp_path):
    return small_corpus(tmp_path, {"a.py": "def a():\n    return 1\n", "b.py": "B = 2\n", "c.py": "C = 3\n"})


def annotation(doc_id: str, label: str, text: str | None = None) -> dict:
    return {"id": doc_id, "label": label, "sha1": text_sha1(text) if text else None, "annotator": "test"}


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


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


# ---------------------------------------------------------------------------------------------
# End to end on the standard library with the offline annotator


def filter_args(corpus: list[str], classifier: Path, prefix: Path, *extra: str) -> list[str]:
    return ["filter", "--corpus", *corpus, "--classifier", str(classifier), "--output-prefix", str(prefix), *extra]


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


# ---------------------------------------------------------------------------------------------
# Embeddings: where they run, and batching across files


def test_embedding_device_is_chosen_explicitly(monkeypatch, caplog):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(embed, "cuda_visible", lambda: False)  # as on this CPU-only machine
    with caplog.at_level(logging.INFO, logger="data_tools.embed"):
        assert resolve_device("auto") == "cpu"
    assert "embedding device: cpu (--device auto; no CUDA device visible" in caplog.text
    with pytest.raises(EmbedderError, match="--device cuda but this process sees no CUDA device.*--device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(embed, "cuda_visible", lambda: True)  # a task given a GPU
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_tools.embed"):
        assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    assert "embedding device: cuda (--device auto; a CUDA device is visible, fp16)" in caplog.text
    with pytest.raises(EmbedderError, match="--device 'gpu': choose one of auto, cpu, cuda"):
        resolve_device("gpu")


@pytest.mark.skipif(embed.cuda_visible(), reason="needs a machine without a CUDA device")
def test_filter_on_cuda_without_a_gpu_is_one_clear_error_before_anything_runs(tmp_path, tiny_corpus, capsys):
    code, err = run_cli(capsys, *filter_args([str(tiny_corpus)], tmp_path, tmp_path / "out"), "--device", "cuda")
    assert code == 2 and len(err.splitlines()) == 1
    assert "--device cuda but this process sees no CUDA device" in err and "--device cpu" in err
    assert list(tmp_path.iterdir()) == [tiny_corpus]


@pytest.mark.slow
def test_minilm_embeds_many_files_per_batch_as_it_embeds_each_alone():
    texts = [
        "def add(a, b):\n    return a + b\n",
        '"""A module."""\n' + "import os\n" * 40,
        "class Stack:\n    def __init__(self):\n        self.items = []\n",
        "x = 1",
    ]
    embedder = load_embedder("minilm", device="cpu")
    assert embedder.device == "cpu"
    together = embedder.encode(texts, batch_size=4)
    alone = np.concatenate([embedder.encode([t]) for t in texts])
    assert together.dtype == np.float32 and together.shape == (4, 384)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_causal_lm_embedder_mean_pools_the_models_last_hidden_states(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from data_tools.embed import load_embedder
    from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer

    make_tokenizer(tmp_path)
    reference = make_hf_phi(tmp_path, tokenizer_dir=tmp_path)
    texts = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n" * 3]
    vectors = load_embedder(str(tmp_path)).encode(texts)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    for text, vector in zip(texts, vectors, strict=True):
        with torch.no_grad():
            hidden = reference(torch.tensor([tokenizer.encode(text)]), output_hidden_states=True).hidden_states[-1]
        expected = hidden[0].mean(0).numpy()
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)
