import json

import numpy as np
import pytest

from data_tools.embed import load_embedder
from data_tools.synth import main
from data_tools.synth_report import ReportOptions, diversity_report

LONG = " ".join(f"w{i}" for i in range(40))  # 40 distinct words
NEAR = LONG.rsplit(" ", 1)[0] + " z"  # the last word changed: 35 of 37 distinct 5-word shingles shared

# id, text, prompt hash, topic
PLANTED = [
    ("t0", "the cat sat on the mat", "p1", "A"),
    ("t1", "the cat sat on the mat", "p1", "A"),  # exact duplicate of t0
    ("t2", "a dog ran in the park", "p2", "B"),
    ("t3", LONG, "p3", "B"),
    ("t4", NEAR, "p3", "C"),  # near duplicate of t3 (Jaccard 35/37 = 0.95)
    ("t5", "one two three", None, "C"),  # from another tool: no prompt hash
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def planted_records():
    return [{"id": i, "text": text, "meta": {"topic": topic, **({"prompt_sha1": p} if p else {})}}
            for i, text, p, topic in PLANTED]


def test_the_report_counts_prompts_duplicates_ngrams_and_topics_of_a_planted_set(tmp_path):
    path = write_jsonl(tmp_path / "textbooks.jsonl", planted_records())
    report = diversity_report([path], tmp_path / "report", options=ReportOptions(embedder=None))
    assert report["records"] == 6
    assert report["prompts"] == {"with_prompt_hash": 5, "distinct": 3, "most_uses": 2}
    dups = report["near_duplicates"]
    assert (dups["exact"], dups["near"], dups["rate"]) == (1, 1, round(2 / 6, 6))
    assert (dups["threshold"], dups["num_perm"], dups["ngram"]) == (0.8, 128, 5)  # the dedup stage's defaults
    assert [(e["id"], e["duplicate_of"], e["reason"]) for e in dups["examples"]] == [("t1", "t0", "exact"),
                                                                                     ("t4", "t3", "near")]
    # Words: 6 + 6 + 6 + 40 + 40 + 3 = 101; distinct: the cat sat on mat (5), a dog ran in park (5),
    # w0..w39 (40), z (1), one two three (3) = 54. Bigrams: 5 + 5 + 5 + 39 + 39 + 2 = 95; distinct:
    # 5 (t0 = t1) + 5 (t2) + 39 (t3) + 1 ("w38 z") + 2 (t5) = 52. Trigrams: 4+4+4+38+38+1 = 89;
    # distinct 4 + 4 + 38 + 1 + 1 = 48.
    ngrams = report["distinct_ngrams"]
    assert ngrams["records"] == 6
    assert {n: (ngrams[n]["distinct"], ngrams[n]["total"]) for n in ("1", "2", "3")} == {
        "1": (54, 101), "2": (52, 95), "3": (48, 89)}
    assert ngrams["1"]["ratio"] == round(54 / 101, 6)
    assert report["histograms"] == {"topic": {"A": 2, "B": 2, "C": 2}}
    assert report["embedding"] is None and report["exercises"] is None
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["diversity.json", "diversity.md",
                                                                       "diversity.png"]
    assert json.loads((tmp_path / "report" / "diversity.json").read_text())["near_duplicates"]["exact"] == 1
    assert (tmp_path / "report" / "diversity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report" / "diversity.md").read_text()
    assert "- Distinct prompts: 3 over 5 records (at most 2 records per prompt)" in md
    assert "- Near duplicates: 2 of 6 (33.33%): 1 exact, 1 MinHash (Jaccard >= 0.8" in md
    assert "| 2 | 52 | 95 | 0.5474 |" in md


def test_the_share_of_exercises_that_passed_the_sandbox_comes_from_the_failure_log(tmp_path):
    kept = [{"id": f"e{i}", "text": f"def f{i}(): pass", "entry_point": f"f{i}", "test": "def check(c): ...",
             "meta": {"function_name": f"f{i}"}} for i in range(2)]
    meta = {"function_name": "g"}
    failures = [
        {"id": "x1", "reason": "rejected: solution fails its own tests (failed): AssertionError", "meta": meta},
        {"id": "x2", "reason": "rejected: near-duplicate exercise: solution and tests repeat e0 (near, Jaccard 0.9)",
         "meta": meta},
        {"id": "x3", "reason": "rejected: does not parse: invalid syntax (line 3)", "meta": meta},
        {"id": "x4", "reason": "HTTP 400: This prompt is not allowed", "meta": meta},
        {"id": "t9", "reason": "rejected: empty answer", "meta": {"topic": "A"}},  # a textbook: not counted
    ]
    path = write_jsonl(tmp_path / "exercises.jsonl", kept)
    write_jsonl(tmp_path / "exercises.failures.jsonl", failures)  # found next to the input by its name
    report = diversity_report([path], tmp_path / "r", options=ReportOptions(embedder=None))
    assert report["failure_logs"] == [str(tmp_path / "exercises.failures.jsonl")]
    # a glob over the run's files matches the failure log too: read as one, never as generated text
    globbed = diversity_report([tmp_path / "exercises*.jsonl"], tmp_path / "r2", options=ReportOptions(embedder=None))
    assert globbed["inputs"] == [str(path)] and globbed["failure_logs"] == report["failure_logs"]
    assert globbed["exercises"] == report["exercises"]
    # answered: 2 kept + 3 rejected; passed the sandbox: 2 kept + 1 dropped later as a near duplicate;
    # run in the sandbox: those 3 + 1 that failed its tests (the unparsable one never ran).
    assert report["exercises"] == {
        "answered": 5, "kept": 2, "passed_sandbox": 3, "failed_sandbox": 1, "near_duplicates_dropped": 1,
        "unanswered": 1, "sandbox_pass_rate": 0.75, "kept_share": 0.4,
        "rejection_reasons": {"solution fails its own tests": 1, "near-duplicate exercise": 1, "does not parse": 1}}


@pytest.mark.slow
def test_embedding_coverage_is_the_mean_pairwise_minilm_distance_and_the_cluster_count(tmp_path):
    topics = ["How to sort a list of numbers in Python with the sorted function",
              "A recipe for tomato soup with fresh basil and garlic",
              "The football match ended in a draw after extra time"]
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in topics + topics])  # each one twice
    embedder = load_embedder("minilm")
    report = diversity_report([path], tmp_path / "r", embedder=embedder, options=ReportOptions(cluster_distance=0.5))
    vectors = embedder.encode(topics)
    d01, d02, d12 = (1 - float(vectors[a] @ vectors[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    assert min(d01, d02, d12) > 0.5  # unrelated texts: farther apart than the cluster distance
    # 15 pairs: the 3 copies at distance 0, and each cross distance 4 times (2 copies x 2 copies)
    coverage = report["embedding"]
    assert coverage["texts"] == 6 and coverage["clusters"] == 3 and coverage["embedder"] == "minilm"
    assert coverage["mean_pairwise_distance"] == pytest.approx(4 * (d01 + d02 + d12) / 15, abs=1e-4)
    few = diversity_report([path], tmp_path / "r2", embedder=embedder,
                           options=ReportOptions(embed_sample=2, cluster_distance=2.0))
    assert few["embedding"]["texts"] == 2 and few["embedding"]["clusters"] == 1
    assert np.isfinite(few["embedding"]["mean_pairwise_distance"])


def test_report_cli_writes_the_three_files_and_refuses_input_without_text(tmp_path, capsys):
    path = write_jsonl(tmp_path / "t.jsonl", planted_records())
    assert main(["report", "--input", str(path), "--out-dir", str(tmp_path / "r"), "--no-embeddings"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("# Diversity of the synthetic data\n\n6 records from ")
    assert "wrote " in out.err and (tmp_path / "r" / "diversity.png").exists()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"content": "x"}])
    assert main(["report", "--input", str(bad), "--out-dir", str(tmp_path / "r2"), "--no-embeddings"]) == 2
    assert capsys.readouterr().err.strip() == ("error: record 0 has no string field 'text' (fields: ['content']); "
                                               "pass --text-key")
    assert main(["report", "--input", str(tmp_path / "none.jsonl"), "--out-dir", str(tmp_path / "r3")]) == 2
    assert "matches no files" in capsys.readouterr().err
