"""Quality filter throughput (documents/s) on real Python files, against an earlier version of the filter.

The corpus is ``--docs`` ``.py`` files of this Python's site-packages (every k-th file in path order, so
that many packages are in it), in 8 shards. A classifier is trained once on heuristic annotations of a
sample (the default embedding settings: MiniLM, files cut at 8192 characters, its 256 word pieces), then
both versions filter the whole corpus with it, each run a fresh ``python -m data_tools.quality filter``
process, alternating, at each batch size (and process count). Documents/s is over the command's wall
time, model loading included. Every run must keep the same documents.

Both versions are git revisions of this repository (``--baseline-ref``, ``--ref``, default HEAD),
extracted with ``git archive`` into the work directory, so that edits to the checkout during a run do
not change what is measured.

    python benchmarks/quality_filter_throughput.py --workdir /tmp/qbench --baseline-ref 21fc3a7 \\
        --batch-sizes 64 256 --processes 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.corpus import iter_corpus  # noqa: E402
from data_tools.jsonl import JsonlShardWriter  # noqa: E402


def site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


def build_corpus(workdir: Path, docs: int, shards: int = 8) -> list[Path]:
    records = sorted(
        iter_corpus([site_packages()], exclude=("*/__pycache__/*", "*/tests/*", "*/test/*")), key=lambda r: r["id"]
    )
    step = max(1, len(records) // docs)
    chosen = records[::step][:docs]
    paths = []
    for shard in range(shards):
        with JsonlShardWriter(workdir / f"corpus{shard}") as writer:
            for record in chosen[shard::shards]:
                writer.write(record)
        paths += writer.paths
    print(f"corpus: {len(chosen)} of {len(records)} files, {sum(len(r['text']) for r in chosen) / 1e6:.1f} MB")
    return paths


def quality(tree: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "data_tools.quality", *args], cwd=tree, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"data_tools.quality {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - start


def extract(ref: str, tree: Path) -> Path:
    if not tree.exists():
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def kept_ids(prefix: Path) -> list[str]:
    ids = []
    for shard in sorted(prefix.parent.glob(f"{prefix.name}-*.jsonl")):
        ids += [json.loads(line)["id"] for line in shard.open(encoding="utf-8")]
    return sorted(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--baseline-ref", required=True, help="git revision of the earlier filter")
    parser.add_argument("--ref", default="HEAD", help="git revision of the filter measured (default: HEAD)")
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--annotate", type=int, default=400, help="annotated files the classifier learns from")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--processes", type=int, nargs="+", default=[1], help="old: --workers; new: --tasks/--workers")
    args = parser.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    baseline, new = extract(args.baseline_ref, work / "baseline"), extract(args.ref, work / "new")
    shards = sorted(work.glob("corpus*-*.jsonl")) or build_corpus(work, args.docs)
    corpus = [str(p) for p in shards]
    documents = sum(1 for p in shards for _ in p.open(encoding="utf-8"))
    if not (work / "clf" / "classifier.json").exists():
        quality(new, "annotate", "--annotator", "heuristic", "--corpus", *corpus, "--out", str(work / "ann.jsonl"),
                "--limit", str(args.annotate), "--no-progress")  # fmt: skip
        seconds = quality(new, "train", "--corpus", *corpus, "--annotations", str(work / "ann.jsonl"),
                          "--out", str(work / "clf"), "--device", "cpu")  # fmt: skip
        print(f"classifier trained in {seconds:.0f} s")

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {documents} documents")
    print("| version | batch size | processes | wall s | documents/s | kept | load before -> after |")
    print("|---|---:|---:|---:|---:|---:|---|")
    reference = None
    for processes in args.processes:
        for batch in args.batch_sizes:
            for version, tree in (("before (per-file pool)", baseline), ("datatrove filter", new)):
                tag = f"{'old' if tree == baseline else 'new'}-b{batch}-p{processes}"
                prefix = work / tag / "edu"
                if prefix.parent.exists():
                    subprocess.run(["rm", "-rf", str(prefix.parent)], check=True)
                split = ["--workers", str(processes)]
                if tree == new:
                    split += ["--tasks", str(processes), "--device", "cpu"]
                load = os.getloadavg()[0]
                seconds = quality(tree, "filter", "--corpus", *corpus, "--classifier", str(work / "clf"),
                                  "--output-prefix", str(prefix), "--batch-size", str(batch), *split)  # fmt: skip
                ids = kept_ids(prefix)
                if reference is None:
                    reference = ids
                same = "same kept ids" if ids == reference else "DIFFERENT kept ids"
                print(
                    f"| {version} | {batch} | {processes} | {seconds:.1f} | {documents / seconds:.1f} | {len(ids)} "
                    f"({same}) | {load:.1f} -> {os.getloadavg()[0]:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
