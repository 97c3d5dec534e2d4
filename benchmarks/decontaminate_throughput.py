"""Decontamination throughput: documents/s before datatrove (one process, every check on every item) and
now (13-gram alone on ``--input``, all checks on ``--deep-input``), on real Python files.

The corpus is ``--files`` ``.py`` files of the virtual environment's site-packages, evenly spaced in the
sorted path list, written as JSONL in four files; the deep runs (and the old one, which embeds every item)
read the first ``--deep-files`` of them. Besides wall time, each run's CPU time (this process and its
finished children) is reported: on a shared machine it says more than wall time about the work done. The implementation before datatrove is taken from
the repository's history (``git show COMMIT:data_tools/decontaminate.py``) and run on the same inputs and
problems (HumanEval and, with ``--mbpp-path``, MBPP); both load the embedder inside the timed span. The
kept ids of the old run and the new deep run are compared.

    python benchmarks/decontaminate_throughput.py --workdir /tmp/dcbench --files 4000 --deep-files 1000 \
        --mbpp-path mbpp.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from bench_common import REPO, cpu_seconds, module_at_commit

sys.path.insert(0, str(REPO))

from data_tools.decontaminate import load_benchmark_items, main  # noqa: E402
from megaphi.common.jsonl import read_jsonl  # noqa: E402

BEFORE_DATATROVE = "21fc3a7255ce632871157c79b2ccdc04111a75af"


def write_corpus(directory: Path, chosen: list[Path], site: Path) -> tuple[list[str], int]:
    directory.mkdir(parents=True)
    shards = [directory / f"corpus-{k}.jsonl" for k in range(4)]
    size = 0
    handles = [p.open("w") for p in shards]
    for i, path in enumerate(chosen):
        text = path.read_text(errors="replace")
        size += len(text.encode())
        handles[i % 4].write(json.dumps({"id": str(path.relative_to(site)), "text": text}) + "\n")
    for h in handles:
        h.close()
    return [str(p) for p in shards], size


def kept(prefix: Path, pattern: str) -> list[str]:
    return sorted(r["id"] for path in sorted(prefix.parent.glob(pattern)) for r in read_jsonl(path))


def timed(label: str, fn: Callable[[], object], documents: int) -> dict:
    load = os.getloadavg()[0]
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    row = {
        "run": label,
        "documents": documents,
        "wall_s": round(seconds, 1),
        "docs_per_wall_s": round(documents / seconds, 1),
        "cpu_s": round(cpu, 1),
        "docs_per_cpu_s": round(documents / cpu, 1),
        "load1_before": load,
    }
    print(json.dumps(row), flush=True)
    return row


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/decontaminate-bench")
    parser.add_argument("--files", type=int, default=4000, help="files for the 13-gram-only runs")
    parser.add_argument("--deep-files", type=int, default=1000, help="files for the runs with every check")
    parser.add_argument("--mbpp-path", help="add MBPP's 500 test problems (default: HumanEval only)")
    parser.add_argument("--skip-old", action="store_true", help="time only the current implementation")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    site = Path(sysconfig.get_paths()["purelib"])
    paths = sorted(site.rglob("*.py"))
    chosen = paths[:: max(1, len(paths) // args.files)][: args.files]
    inputs, size = write_corpus(work / "all", chosen, site)
    deep_inputs, deep_size = write_corpus(work / "deep", chosen[: args.deep_files], site)
    benchmarks = ["humaneval", "mbpp"] if args.mbpp_path else ["humaneval"]
    extra = ["--benchmarks", *benchmarks] + (["--mbpp-path", args.mbpp_path] if args.mbpp_path else [])
    print(
        json.dumps(
            {
                "files": args.files,
                "mbytes": round(size / 1e6, 1),
                "deep_files": args.deep_files,
                "deep_mbytes": round(deep_size / 1e6, 1),
                "load1": os.getloadavg()[0],
                "benchmarks": benchmarks,
                "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
                "python": platform.python_version(),
            }
        ),
        flush=True,
    )
    rows = []

    def new(name: str, flag: str, tasks: int) -> None:
        prefix = work / name / "clean"
        argv = [
            flag,
            *(deep_inputs if flag == "--deep-input" else inputs),
            "--output-prefix",
            str(prefix),
            *extra,
            "--tasks",
            str(tasks),
            "--workers",
            str(tasks),
        ]
        assert main(argv) == 0

    rows.append(timed("new, 13-gram only, 1 task", lambda: new("ngram1", "--input", 1), args.files))
    rows.append(timed("new, 13-gram only, 2 tasks", lambda: new("ngram2", "--input", 2), args.files))
    rows.append(timed("new, all checks, 1 task", lambda: new("deep1", "--deep-input", 1), args.deep_files))
    if not args.skip_old:
        old = module_at_commit(BEFORE_DATATROVE, "data_tools/decontaminate.py", work)
        items = load_benchmark_items(benchmarks, args.mbpp_path)
        rows.append(
            timed(
                "before datatrove (all checks, one process)",
                lambda: old.decontaminate(deep_inputs, work / "old" / "clean", items, old.DecontaminationParams()),
                args.deep_files,
            )
        )
        old_kept = kept(work / "old" / "clean", "clean-[0-9]*.jsonl")
        new_kept = kept(work / "deep1" / "clean", "clean-*-*.jsonl")
        print(
            json.dumps(
                {
                    "old_kept": len(old_kept),
                    "new_deep_kept": len(new_kept),
                    "same_kept_ids": old_kept == new_kept,
                    "only_old_kept": sorted(set(old_kept) - set(new_kept))[:10],
                    "only_new_kept": sorted(set(new_kept) - set(old_kept))[:10],
                }
            ),
            flush=True,
        )
    ngram_kept = kept(work / "ngram1" / "clean", "clean-*-*.jsonl")
    print(json.dumps({"ngram_only_kept": len(ngram_kept), "load1_end": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main_benchmark()
