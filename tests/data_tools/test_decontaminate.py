import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from data_tools.contamination import DecontaminationError, load_benchmark_items
from data_tools.decontaminate import DecontaminateConfig, main
from megaphi.eval.benchmarks import load_humaneval
from tests.conftest import read_jsonl

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
MBPP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mbpp" / "mbpp.jsonl"
# The last commit whose decontamination ran as one process over all its inputs: the oracle for kept ids.
BEFORE_DATATROVE = "21fc3a7255ce632871157c79b2ccdc04111a75af"

# HumanEval/0's canonical solution with every name changed and the docstring gone: no 13-gram in
# common with the problem, but the same program shape.
RENAMED_HUMANEVAL_0 = """
def close_pair_exists(values, limit):
    for a, first in enumerate(values):
        for b, second in enumerate(values):
            if a != b:
                gap = abs(first - second)
                if gap < limit:
                    return True

    return False
"""
# The same shape again under other names: a copy that only the AST check can see.
RENAMED_AGAIN = RENAMED_HUMANEVAL_0.replace("close_pair_exists", "has_near_pair").replace("gap", "d")
# Mbpp/20 ("check if the given number is woodball") reworded: other names, other comment, same program.
MBPP_20_PARAPHRASE = """
# Tell whether n is a Woodall number, i.e. of the form k * 2**k - 1.
def woodall_check(n):
    if n % 2 == 0:
        return False
    if n == 1:
        return True
    n = n + 1
    k = 0
    while n % 2 == 0:
        n = n / 2
        k = k + 1
        if k == n:
            return True
    return False
"""
BENCHMARKS = ["humaneval", "mbpp"] if MBPP.exists() else ["humaneval"]
PROBLEMS = ["HumanEval/0", "HumanEval/2", "HumanEval/10"] + (["Mbpp/11", "Mbpp/20"] if MBPP.exists() else [])
TOP_K = 2  # below the problem count: each item is AST-compared only with the problems nearest by embedding


def record(id: str, text: str) -> dict:
    return {"id": id, "text": text, "meta": {"source": id.split("/")[0]}}


def write_split(directory: Path, name: str, records: list[dict], files: int = 3) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        path = directory / f"{name}-{k}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records[k::files]))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A corpus checked by 13-gram only and exercises checked by every signal, each in three files, with
    contaminated items planted in both."""
    root = tmp_path_factory.mktemp("planted")
    humaneval = load_humaneval().problems
    corpus = [
        record(f"corpus/{name}", (STDLIB / name).read_text()[:4000])
        for name in ("textwrap.py", "colorsys.py", "bisect.py", "shlex.py", "fnmatch.py", "glob.py")
    ] + [
        record("corpus/copied-prompt", "# a tutorial\n" + humaneval[2].prompt),
        record("corpus/renamed-solution", RENAMED_AGAIN),  # survives: the corpus gets no AST check
    ]
    exercises = [
        record(f"exercises/{name}", (STDLIB / name).read_text()[:1500])
        for name in ("keyword.py", "heapq.py", "calendar.py", "string.py")
    ] + [record("exercises/renamed-solution", RENAMED_HUMANEVAL_0)]
    if MBPP.exists():
        exercises.append(record("exercises/mbpp-paraphrase", MBPP_20_PARAPHRASE))
    return {
        "root": root,
        "corpus": write_split(root / "in", "corpus", corpus),
        "exercises": write_split(root / "in", "exercises", exercises),
        "ids": {r["id"] for r in corpus + exercises},
    }


def command(planted, prefix: Path, *extra: str, deep_everything: bool = False) -> list[str]:
    inputs = (
        ["--deep-input", *planted["corpus"], *planted["exercises"]]
        if deep_everything
        else ["--input", *planted["corpus"], "--deep-input", *planted["exercises"]]
    )
    args = [*inputs, "--output-prefix", str(prefix), "--benchmarks", *BENCHMARKS, "--problems", *PROBLEMS]
    args += ["--top-k", str(TOP_K), *extra]
    return args + (["--mbpp-path", str(MBPP)] if MBPP.exists() else [])


def kept_ids(prefix: Path) -> list[str]:
    return sorted(r["id"] for r in read_jsonl(*sorted(prefix.parent.glob(f"{prefix.name}-*-*.jsonl"))))


EXPECTED_REMOVED = {
    "corpus/copied-prompt": ("13-gram overlap", "humaneval", "HumanEval/2"),
    "exercises/renamed-solution": ("ast match", "humaneval", "HumanEval/0"),
    **({"exercises/mbpp-paraphrase": ("ast match", "mbpp", "Mbpp/20")} if MBPP.exists() else {}),
}


@pytest.fixture(scope="module")
def one_task(planted):
    prefix = planted["root"] / "one" / "clean"
    assert main(command(planted, prefix, "--tasks", "1")) == 0
    return prefix


def test_planted_contamination_is_removed_with_its_reason_and_clean_items_are_kept(planted, one_task):
    removed = {r["id"]: r for r in read_jsonl(f"{one_task}.removed.jsonl")}
    assert {i: (r["reason"], r["benchmark"], r["task_id"]) for i, r in removed.items()} == EXPECTED_REMOVED
    assert removed["exercises/renamed-solution"]["ast_match_rate"] == 1.0
    assert kept_ids(one_task) == sorted(planted["ids"] - set(EXPECTED_REMOVED))
    # kept records are written back unchanged
    kept = {r["id"]: r for r in read_jsonl(*one_task.parent.glob("clean-*-*.jsonl"))}
    assert kept["corpus/glob.py"] == {
        "id": "corpus/glob.py",
        "text": (STDLIB / "glob.py").read_text()[:4000],
        "meta": {"source": "corpus"},
    }

    report = json.loads(Path(f"{one_task}.decontamination.json").read_text())
    assert report["removed"]["humaneval"] == {"13-gram overlap": 1, "ast match": 1}
    if MBPP.exists():
        assert report["removed"]["mbpp"] == {"13-gram overlap": 0, "ast match": 1}
    assert (report["documents"], report["kept"]) == (len(planted["ids"]), len(planted["ids"]) - len(EXPECTED_REMOVED))
    assert report["deep_documents"] == sum(i.startswith("exercises/") for i in planted["ids"])
    assert [t["rank"] for t in report["tasks"]] == [0] and report["tasks"][0]["kept"] == report["kept"]
    by_task = {p["task_id"]: p for p in report["problems"]}
    assert list(by_task) == PROBLEMS
    zero = by_task["HumanEval/0"]
    assert zero["closest"][0]["id"] == "exercises/renamed-solution"  # nearest by embedding too
    assert len([c for c in zero["closest"] if not c["ngram_overlap"]]) == TOP_K
    assert zero["closest"] == sorted(zero["closest"], key=lambda c: c["l2_distance"])
    assert zero["similar_at"] == {"0.95": True, "0.9": True, "0.85": True, "0.8": True}
    two = by_task["HumanEval/2"]
    copied = [c for c in two["closest"] if c["ngram_overlap"]]
    assert copied == [
        {"id": "corpus/copied-prompt", "l2_distance": None, "ast_match_rate": None, "ngram_overlap": True}
    ]
    table = Path(f"{one_task}.decontamination.md").read_text()
    assert "| humaneval | 1 | 1 |" in table


def test_a_killed_task_rerun_finishes_only_what_is_missing_with_the_kept_ids_of_one_task(planted, one_task):
    prefix = planted["root"] / "three" / "clean"
    args = command(planted, prefix, "--tasks", "3", "--workers", "1")
    done = Path(f"{prefix}.datatrove/decontaminate/completions")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    job = subprocess.Popen(
        [sys.executable, "-m", "data_tools.decontaminate", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Tasks run one after another here; each loads the embedder first, so task 1 is still busy when task 0's
    # completion marker appears.
    while not (done / "00000").exists() and job.poll() is None:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert (done / "00000").exists() and not (done / "00001").exists() and not (done / "00002").exists()
    assert not list(prefix.parent.glob("clean-00001-*.jsonl"))  # a killed task leaves no shard to read
    finished = [
        *prefix.parent.glob("clean-00000-*.jsonl"),
        *Path(f"{prefix}.decontamination-tasks").glob("*-00000.json*"),
        Path(f"{prefix}.datatrove/decontaminate/logs/task_00000.log"),
    ]
    before = {path: path.stat().st_mtime_ns for path in finished}

    assert main(args) == 0

    assert {path: path.stat().st_mtime_ns for path in finished} == before
    assert sorted(p.name for p in done.iterdir()) == ["00000", "00001", "00002"]
    assert kept_ids(prefix) == kept_ids(one_task)
    report = json.loads(Path(f"{prefix}.decontamination.json").read_text())
    assert [t["rank"] for t in report["tasks"]] == [0, 1, 2]
    assert sum(t["documents"] for t in report["tasks"]) == report["documents"] == len(planted["ids"])
    removed = {r["id"]: (r["reason"], r["benchmark"], r["task_id"]) for r in read_jsonl(f"{prefix}.removed.jsonl")}
    assert removed == EXPECTED_REMOVED


def before_datatrove(tmp_path):
    """The decontamination module as it was before it ran on datatrove, from the repository's history."""
    shown = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BEFORE_DATATROVE}:data_tools/decontaminate.py"],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        pytest.skip(f"commit {BEFORE_DATATROVE[:7]} is not in this checkout's history: {shown.stderr.strip()}")
    path = tmp_path / "decontaminate_before_datatrove.py"
    path.write_text(shown.stdout)
    spec = importlib.util.spec_from_file_location("decontaminate_before_datatrove", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_with_every_input_deep_checked_the_kept_ids_are_those_of_the_implementation_before(planted, tmp_path):
    old = before_datatrove(tmp_path)
    inputs = planted["corpus"] + planted["exercises"]
    items = load_benchmark_items(BENCHMARKS, str(MBPP) if MBPP.exists() else None, PROBLEMS)
    old.decontaminate(inputs, tmp_path / "old", items, old.DecontaminationParams(top_k=TOP_K))
    assert main(command(planted, tmp_path / "new", "--tasks", "2", deep_everything=True)) == 0

    old_kept = sorted(r["id"] for r in read_jsonl(*tmp_path.glob("old-*.jsonl")))
    assert kept_ids(tmp_path / "new") == old_kept
    assert "corpus/renamed-solution" not in old_kept  # deep-checked, the corpus's renamed copy goes too
    old_removed = {r["id"]: (r["reason"], r["task_id"]) for r in read_jsonl(tmp_path / "old.removed.jsonl")}
    new_removed = {r["id"]: (r["reason"], r["task_id"]) for r in read_jsonl(tmp_path / "new.removed.jsonl")}
    assert new_removed == old_removed


def test_inputs_not_marked_deep_get_the_ngram_check_alone(planted, tmp_path):
    prefix = tmp_path / "clean"
    args = ["--input", *planted["corpus"], "--output-prefix", str(prefix), "--benchmarks", "humaneval", "--tasks", "2"]
    assert main(args) == 0
    removed = {r["id"]: r["reason"] for r in read_jsonl(f"{prefix}.removed.jsonl")}
    assert removed == {"corpus/copied-prompt": "13-gram overlap"}
    assert "corpus/renamed-solution" in kept_ids(prefix)  # by design: AST copies are found in deep inputs only
    report = json.loads(Path(f"{prefix}.decontamination.json").read_text())
    assert (report["deep_documents"], report["embedder"], report["removed_ast"]) == (0, None, 0)
    assert len(report["problems"]) == 164


def test_bad_inputs_give_one_clear_error(tmp_path, capsys):
    def config(**changes):
        return DecontaminateConfig(**{"input": ["a.jsonl"], "output_prefix": str(tmp_path / "o"), **changes})

    with pytest.raises(DecontaminationError, match="no inputs"):
        config(input=[]).validate()
    with pytest.raises(DecontaminationError, match="in both --input and --deep-input"):
        config(deep_input=["a.jsonl"]).validate()
    with pytest.raises(DecontaminationError, match="thresholds"):
        config(ast_threshold=0).validate()
    with pytest.raises(DecontaminationError, match="unknown benchmark"):
        config(benchmarks=["apps"]).validate()
    with pytest.raises(DecontaminationError, match="--device"):
        config(device="tpu").validate()
    # through the command: one error line, exit status 2, nothing written
    assert main(["--output-prefix", str(tmp_path / "o"), "--benchmarks", "humaneval"]) == 2
    assert "error: no inputs" in capsys.readouterr().err
    assert not list(tmp_path.glob("o*"))
