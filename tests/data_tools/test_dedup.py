"""Deduplication: exact copies and MinHash near duplicates removed, the first occurrence in input order
kept, the same result for any task count, resumable after a killed task.

The method's stated error (data_tools/minhash.py): the estimated Jaccard similarity has a standard
deviation of sqrt(J (1 - J) / 128), at most 0.035 near the threshold 0.8, and the LSH bands miss a pair
of similarity J with probability (1 - J^7)^18 (8e-6 at J = 0.9). So against exact Jaccard similarity a
decision may go either way only for pairs within MARGIN of the threshold (about 3 standard deviations).
"""

import json
import os
import random
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from data_tools.dedup import (
    DedupConfig,
    DedupError,
    DedupParams,
    Deduplicator,
    deduplicate,
    exact_key,
    main,
    shingles,
    signature,
)
from data_tools.executors import ExecutorOptions
from data_tools.minhash import MAX_MISS_AT_THRESHOLD, candidate_probability, lsh_bands
from megaphi.common.errors import UserError
from tests.conftest import damaged_gzip, read_jsonl

STDLIB = Path(sysconfig.get_paths()["stdlib"])
REPO = Path(__file__).resolve().parents[2]
MARGIN = 0.1


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run(tmp_path: Path, name: str, inputs: list, tasks: int = 1, **settings) -> dict:
    config = DedupConfig(
        input=[str(p) for p in inputs], output_prefix=str(tmp_path / name), no_progress=True, **settings
    )
    return deduplicate(config, ExecutorOptions(tasks=tasks, workers=1))


def kept(report: dict) -> list[dict]:
    return read_jsonl(*report["shards"])


def removed(tmp_path: Path, name: str) -> list[dict]:
    return read_jsonl(tmp_path / f"{name}.removed.jsonl")


@pytest.fixture
def stdlib_records() -> list[dict]:
    files = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py"))[:8]
    return [{"text": f.read_text(), "path": str(f)} for f in files if len(f.read_text()) > 500]


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    x, y = set(shingles(a, ngram)), set(shingles(b, ngram))
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[list[Path], list[dict], dict[str, tuple[str, float]]]:
    """Independent random documents, each followed somewhere later by one variant: an exact copy with
    other whitespace, or a copy with k words replaced (spread out), from Jaccard 0.97 down to 0.2, i.e.
    on both sides of the threshold and right at it. Spread over three files, variants in later files
    than their originals or in the same one. Returns the files, the records in input order and
    variant id -> (original id, exact Jaccard)."""
    rng = random.Random(11)
    vocabulary = [f"w{i}" for i in range(5000)]
    files: list[list[dict]] = [[], [], []]
    truth: dict[str, tuple[str, float]] = {}
    for i, k in enumerate([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 20, 40] * 3):
        words = [rng.choice(vocabulary) for _ in range(300)]
        original = {"id": f"doc{i}", "text": " ".join(words)}
        if k == 0:
            text = "\n\n" + " ".join(words) + "   \n\n\n"  # only blank lines and trailing spaces differ
        else:
            changed = list(words)
            for j in range(k):
                changed[10 + j * (280 // k)] = f"new{i}_{j}"
            text = " ".join(changed)
        variant = {"id": f"doc{i}-variant{k}", "text": text}
        truth[variant["id"]] = (original["id"], jaccard(original["text"], text))
        first = rng.randrange(3)
        files[first].append(original)
        files[rng.randrange(first, 3)].append(variant)
    for n, part in enumerate(files):
        for f in range(10):  # unrelated documents in between (inserting keeps originals before variants)
            filler = {"id": f"filler{n}-{f}", "text": " ".join(rng.choices(vocabulary, k=200))}
            part.insert(rng.randrange(len(part) + 1), filler)
    root = tmp_path_factory.mktemp("planted")
    paths = [write_jsonl(root / f"part{n}.jsonl", part) for n, part in enumerate(files)]
    return paths, [r for part in files for r in part], truth


def oracle(records: list[dict], threshold: float) -> dict[str, tuple[str, str]]:
    """Each document against every kept one in input order, with exact Jaccard similarity."""
    kept_records: list[dict] = []
    decisions: dict[str, tuple[str, str]] = {}
    for record in records:
        exact = next((k for k in kept_records if exact_key(k["text"]) == exact_key(record["text"])), None)
        if exact is not None:
            decisions[record["id"]] = ("exact", exact["id"])
            continue
        best = max(kept_records, key=lambda k: jaccard(k["text"], record["text"]), default=None)
        if best is not None and jaccard(best["text"], record["text"]) >= threshold:
            decisions[record["id"]] = ("near", best["id"])
        else:
            kept_records.append(record)
    return decisions


def test_exact_key_ignores_trailing_spaces_and_blank_lines():
    assert exact_key("def f():\n    return 1\n") == exact_key("def f():   \n\n\n    return 1\n\n")
    assert exact_key("def f():\n    return 1\n") != exact_key("def f():\n    return 2\n")


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0])
def test_the_lsh_bands_catch_pairs_at_the_threshold_with_the_fewest_candidates(threshold):
    bands, rows = lsh_bands(threshold, 128)
    assert bands * rows <= 128
    assert candidate_probability(threshold, bands, rows) >= 1 - MAX_MISS_AT_THRESHOLD
    assert candidate_probability(min(1.0, threshold + MARGIN), bands, rows) > 0.999
    if rows < 128:  # one more row per band (fewer dissimilar candidates) would miss too many at the threshold
        assert candidate_probability(threshold, 128 // (rows + 1), rows + 1) < 1 - MAX_MISS_AT_THRESHOLD


def test_near_duplicates_are_those_of_an_exact_jaccard_oracle_within_the_stated_error(tmp_path, planted):
    paths, records, truth = planted
    report = run(tmp_path, "out", paths, tasks=2)
    found = {r["id"]: (r["reason"], r["duplicate_of"]) for r in removed(tmp_path, "out")}
    expected = oracle(records, 0.8)
    levels = sorted({round(j, 2) for _, j in truth.values()})
    assert levels[0] < 0.3 and levels[-1] == 1.0 and sum(abs(j - 0.8) < MARGIN for j in levels) >= 4
    for variant, (original, similarity) in truth.items():
        if abs(similarity - 0.8) >= MARGIN:
            assert found.get(variant) == expected.get(variant), (variant, similarity)
        else:  # within the error: either answer, but a removal names the original
            assert found.get(variant) in (None, ("near", original)), (variant, similarity)
    assert set(found) <= set(truth), "no filler or original is removed"
    assert {v for v, (_, j) in truth.items() if j == 1.0} == {v for v, (why, _) in found.items() if why == "exact"}
    assert sorted(r["id"] for r in kept(report)) == sorted(r["id"] for r in records if r["id"] not in found)

    # The in-memory deduplicator (synthetic exercises) is the same rule: the same decisions.
    memory = Deduplicator(DedupParams())
    in_memory = {}
    for record in records:
        verdict = memory.check(record["id"], exact_key(record["text"]), signature(record["text"]))
        if verdict:
            in_memory[record["id"]] = (verdict["reason"], verdict["duplicate_of"])
    assert in_memory == found


def test_first_occurrence_is_kept_and_copies_are_removed_with_their_reason(tmp_path, stdlib_records):
    exact_copy = {"text": stdlib_records[0]["text"] + "\n\n  \n", "path": "copy-exact"}
    near_copy = {"text": stdlib_records[1]["text"] + "\n# one more comment at the end\n", "path": "copy-near"}
    inputs = write_jsonl(tmp_path / "in.jsonl", stdlib_records + [exact_copy, near_copy])
    report = run(tmp_path, "out", [inputs])

    assert [r["path"] for r in kept(report)] == [r["path"] for r in stdlib_records]
    reasons = {r["id"]: r for r in removed(tmp_path, "out")}
    assert reasons["copy-exact"]["reason"] == "exact"
    assert reasons["copy-exact"]["duplicate_of"] == stdlib_records[0]["path"]
    assert reasons["copy-near"]["reason"] == "near"
    assert reasons["copy-near"]["duplicate_of"] == stdlib_records[1]["path"]
    assert reasons["copy-near"]["jaccard"] >= 0.8
    on_disk = json.loads((tmp_path / "out.dedup.json").read_text())
    assert on_disk == report
    assert (report["documents"], report["kept"], report["exact_duplicates"], report["near_duplicates"]) == (
        len(stdlib_records) + 2,
        len(stdlib_records),
        1,
        1,
    )
    assert (report["threshold"], report["num_perm"], report["ngram"]) == (0.8, 128, 5)


def test_one_and_three_tasks_keep_the_same_documents_and_the_report_has_a_view_per_task(tmp_path, planted):
    paths, records, _ = planted
    one = run(tmp_path, "one", paths, tasks=1)
    three = run(tmp_path, "three", paths, tasks=3)
    assert [r["id"] for r in kept(one)] == [r["id"] for r in kept(three)]
    assert removed(tmp_path, "one") == removed(tmp_path, "three")
    assert len(one["tasks"]) == 1 and len(three["tasks"]) == 3
    for field in ("documents", "kept", "exact_duplicates", "near_duplicates"):
        assert one[field] == three[field] == sum(task[field] for task in three["tasks"])
    # task t read file t: its view counts that file's documents and the removals among them
    removed_ids = {r["id"]: r["reason"] for r in removed(tmp_path, "three")}
    for task, path in zip(three["tasks"], paths, strict=True):
        ids = [r["id"] for r in read_jsonl(path)]
        assert task["documents"] == len(ids)
        assert task["near_duplicates"] == sum(removed_ids.get(i) == "near" for i in ids)
        assert task["exact_duplicates"] == sum(removed_ids.get(i) == "exact" for i in ids)
        assert [r["id"] for r in read_jsonl(*task["shards"])] == [i for i in ids if i not in removed_ids]


def test_a_rerun_after_a_killed_task_runs_only_the_tasks_that_did_not_finish(tmp_path, planted):
    paths, _, _ = planted
    # tasks 1 and 2 read a bigger file each, so the kill lands while task 1 runs
    rng = random.Random(5)
    big = [
        write_jsonl(
            tmp_path / f"part{n}-big.jsonl",
            read_jsonl(paths[n])
            + [{"id": f"big{n}-{i}", "text": f"def f{i}(x):\n    return x + {rng.random()}\n"} for i in range(4000)],
        )
        for n in (1, 2)
    ]
    inputs = [paths[0], *big]
    whole = run(tmp_path, "whole", inputs, tasks=3)

    argv = [
        sys.executable,
        "-m",
        "data_tools.dedup",
        "--input",
        *map(str, inputs),
        "--output-prefix",
        str(tmp_path / "out"),
    ]
    argv += ["--tasks", "3", "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    completions = tmp_path / "out.datatrove" / "signatures" / "completions"
    deadline = time.monotonic() + 300
    while not (completions / "00000").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "task 0 never finished"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    markers = sorted((tmp_path / "out.datatrove").glob("*/completions/*"))
    finished = {p: p.stat().st_mtime_ns for p in markers}
    assert completions / "00000" in finished and completions / "00002" not in finished
    assert not (tmp_path / "out.dedup.json").exists()

    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in markers} == finished, "a finished task ran again"
    assert (completions / "00001").exists() and (completions / "00002").exists()
    report = json.loads((tmp_path / "out.dedup.json").read_text())
    assert [r["id"] for r in kept(report)] == [r["id"] for r in kept(whole)]
    assert removed(tmp_path, "out") == removed(tmp_path, "whole")


def test_dissimilar_documents_are_all_kept():
    dedup = Deduplicator(DedupParams())
    texts = [(STDLIB / name).read_text() for name in ("textwrap.py", "shlex.py", "bisect.py", "colorsys.py")]
    texts.append("def function(x):\n    return x * 3\n")
    decisions = [dedup.check(str(i), exact_key(t), signature(t)) for i, t in enumerate(texts)]
    assert decisions == [None] * len(texts)


def test_another_run_on_the_same_output_prefix_is_refused(tmp_path, stdlib_records):
    inputs = write_jsonl(tmp_path / "in.jsonl", stdlib_records)
    run(tmp_path, "out", [inputs])
    assert run(tmp_path, "out", [inputs])["kept"] == len(stdlib_records)  # the same run: already done
    with pytest.raises(UserError, match=r"with another settings or inputs.*choose another output prefix"):
        run(tmp_path, "out", [inputs], threshold=0.9)
    with pytest.raises(UserError, match=r"with another task count"):
        run(tmp_path, "out", [inputs], tasks=2)


def test_bad_inputs_give_one_clear_error(tmp_path, capsys):
    with pytest.raises(DedupError, match="threshold"):
        run(tmp_path, "o", [write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])], threshold=1.5)
    with pytest.raises(UserError, match="no string field .text."):
        run(tmp_path, "o", [write_jsonl(tmp_path / "b.jsonl", [{"content": "x"}])])
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{broken\n')
    argv = ["--input", str(tmp_path / "c.jsonl"), "--no-progress"]
    assert main([*argv, "--output-prefix", str(tmp_path / "c")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "c.jsonl:2" in errors[0]
    assert main([*argv, "--output-prefix", str(tmp_path / "skip"), "--on-error", "skip"]) == 0
    assert json.loads((tmp_path / "skip.dedup.json").read_text())["malformed_skipped"] == 1
    assert "read 1 documents: kept 1" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["truncated", "bitflip", "crc"])
def test_a_damaged_gzip_input_is_one_error_line_naming_the_file_and_leaves_no_output(tmp_path, capsys, how):
    path = tmp_path / "in.jsonl.gz"
    damaged_gzip(path, [{"id": str(i), "text": f"def f{i}():\n    return {i} * {i % 97}\n"} for i in range(6000)], how)
    argv = [
        "--input",
        str(path),
        "--output-prefix",
        str(tmp_path / "out" / "dd"),
        "--on-error",
        "skip",
        "--no-progress",
    ]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {path}:") and "truncated or corrupt" in errors[0]
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["dd.datatrove"], "no kept shard, removed list or report is left, only the logs"
