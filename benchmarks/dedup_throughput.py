"""Near-duplicate removal: documents/s and peak memory, the datatrove stages against the one-process
datasketch implementation they replaced (``git show <ref>:data_tools/dedup.py``).

Each run is a fresh process; its peak memory is the largest sum of the resident set sizes of the
process and all its descendants (datatrove's task pool, its manager), sampled every 0.5 s with psutil.
The load average (``uptime``) is printed next to each row: the machine may be shared.

Corpora:
- ``synthetic``: ``--docs`` short documents (40-80 words from a 20,000-word vocabulary, in 16 files),
  of which 5% are exact copies and 10% near copies (a few words changed) of earlier ones;
- ``site-packages``: every ``.py`` file of a directory tree (default: this Python's site-packages),
  gathered with ``data_tools.corpus``.

    python benchmarks/dedup_throughput.py synthetic --docs 1000000 --workdir /tmp/ddbench --tasks 2
    python benchmarks/dedup_throughput.py site-packages --workdir /tmp/ddbench --tasks 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def synthetic_corpus(folder: Path, docs: int, files: int = 16, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    vocabulary = [f"tok{i}" for i in range(20000)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part-{n:03d}.jsonl" for n in range(files)]
    outs = [open(p, "w") for p in paths]
    recent: list[list[str]] = []
    for i in range(docs):
        roll = rng.random()
        if recent and roll < 0.05:
            words = rng.choice(recent)  # exact copy
        elif recent and roll < 0.15:
            words = list(rng.choice(recent))
            for _ in range(rng.randint(1, 3)):
                words[rng.randrange(len(words))] = rng.choice(vocabulary)
        else:
            words = rng.choices(vocabulary, k=rng.randint(40, 80))
        if len(recent) < 5000:
            recent.append(words)
        else:
            recent[rng.randrange(5000)] = words
        outs[i % files].write(json.dumps({"id": f"d{i}", "text": " ".join(words)}) + "\n")
    for out in outs:
        out.close()
    return paths


def site_packages_corpus(folder: Path, root: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "data_tools.corpus", "--input", str(root), "--output-prefix", str(folder / "code")]
        + ["--exclude", "*/__pycache__/*", "--shard-bytes", str(32 << 20), "--no-progress"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    return sorted(folder.glob("code-*.jsonl"))


def measure(argv: list[str], log: Path) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (the process and every descendant), peak RSS (bytes) of the process
    tree, and the stdout's last line."""
    with open(log, "w") as err:
        proc = subprocess.Popen(
            argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=err, text=True
        )
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    total = 0
                    for p in [root, *root.children(recursive=True)]:
                        try:
                            total += p.memory_info().rss
                        except psutil.Error:
                            pass
                    peak = max(peak, total)
                except psutil.Error:
                    pass
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        start = time.monotonic()
        sampler.start()
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # its rusage counts every descendant it waited for
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        done.set()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}); see {log}")
    return seconds, usage.ru_utime + usage.ru_stime, peak, (out.strip().splitlines() or [""])[-1]


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", choices=["synthetic", "site-packages"])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--root", default=sysconfig.get_paths()["purelib"], help="tree of .py files (site-packages)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=2, help="datatrove tasks (all run at once locally)")
    parser.add_argument("--old-ref", default="main", help="git ref whose data_tools/dedup.py is the old implementation")
    parser.add_argument("--only", choices=["old", "new"], help="run one implementation")
    args = parser.parse_args()

    work = args.workdir
    corpus = work / "corpus"
    if not (corpus / "COMPLETE").exists():  # built once, shared by the runs of both implementations
        shutil.rmtree(corpus, ignore_errors=True)
        if args.corpus == "synthetic":
            synthetic_corpus(corpus, args.docs)
        else:
            site_packages_corpus(corpus, Path(args.root))
        (corpus / "COMPLETE").write_text("")
    paths = sorted(corpus.glob("*.jsonl"))
    size = sum(p.stat().st_size for p in paths)
    print(f"corpus: {len(paths)} files, {size / 2**20:.0f} MiB", flush=True)
    print(
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        flush=True,
    )

    old_module = work / "old_dedup.py"
    old_source = ["git", "show", f"{args.old_ref}:data_tools/dedup.py"]
    old_module.write_text(subprocess.run(old_source, cwd=REPO, capture_output=True, text=True, check=True).stdout)
    runs = {
        "old": ("old (datasketch, one process)", [sys.executable, str(old_module), "--workers", str(args.tasks)]),
        "new": (
            f"datatrove, {args.tasks} tasks",
            [sys.executable, "-m", "data_tools.dedup", "--tasks", str(args.tasks)],
        ),
    }
    for key, (name, command) in runs.items():
        if args.only and key != args.only:
            continue
        shutil.rmtree(work / key, ignore_errors=True)
        argv = command + ["--input", *map(str, paths), "--output-prefix", str(work / key / "out"), "--no-progress"]
        before = load()
        seconds, cpu, peak, said = measure(argv, work / f"{key}.log")
        documents = int(said.split()[1])
        print(
            f"{name}: {documents} docs in {seconds:.1f}s = {documents / seconds:,.0f} docs/s "
            f"({size / 2**20 / seconds:.1f} MiB/s), CPU {cpu:.0f}s = {documents / cpu:,.0f} docs per CPU-second, "
            f"peak RSS {peak / 2**20:,.0f} MiB ({before} -> {load()}); {said}",
            flush=True,
        )


if __name__ == "__main__":
    main()
