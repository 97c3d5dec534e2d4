"""Preprocessing throughput (documents/s, tokens/s) against the tokenizer's own batch encoding.

The ceiling is the tokenizer alone: ``tokenizers``' ``encode_batch_fast`` (what preprocessing calls)
over the same texts already in memory, in batches of about 1 MiB of text (all at once would hold every
encoding in memory: many GB), in a fresh process with its thread pool on every core, the ids read
out; nothing can preprocess faster without a faster tokenizer. ``data_tools.preprocess`` is
timed end to end (read JSONL, tokenize, write per-task ``.bin/.idx``, merge, report) at each
``--tasks``; with ``--old-module`` an earlier implementation of the module (a file, e.g. saved with
``git show REV:data_tools/preprocess.py``) is timed too, at each ``--old-workers``. Every run writes
the same documents: the script checks that the outputs are byte-identical.

    python -m data_tools.corpus --input .venv/lib/python3.11/site-packages --exclude '*/__pycache__/*' \\
        --output-prefix /tmp/bench/sitepkgs --shard-bytes 64000000
    python -m data_tools.tokenizer train --out /tmp/bench/tok --vocab-size 50257
    python benchmarks/preprocess_throughput.py --corpus '/tmp/bench/sitepkgs-*.jsonl' --tokenizer /tmp/bench/tok \\
        --workdir /tmp/bench --tasks 1 2 --old-module /tmp/bench/old_preprocess.py --old-workers 1 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from bench_common import REPO, cpu_seconds, load_module

sys.path.insert(0, str(REPO))

from data_tools.executors import ExecutorOptions  # noqa: E402
from data_tools.preprocess import preprocess  # noqa: E402

CEILING = """
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
texts = [json.loads(line)["text"] for path in sys.argv[2:] for line in open(path, encoding="utf-8")]
batches, batch, size = [], [], 0
for text in texts:  # about 1 MiB of text per call, as preprocessing batches: bounded memory, every thread busy
    batch.append(text)
    size += len(text)
    if size >= 1 << 20:
        batches.append(batch)
        batch, size = [], 0
batches.append(batch)
start, cpu = time.perf_counter(), time.process_time()
tokens = sum(len(e.ids) for batch in batches for e in tok.encode_batch_fast(batch, add_special_tokens=False))
print(json.dumps([time.perf_counter() - start, len(texts), tokens, time.process_time() - cpu]))
"""


def ceiling(tokenizer: Path, corpus: list[str]) -> tuple[float, int, int, float]:
    """Seconds, documents, tokens and CPU seconds (all threads) of the tokenizer alone (its thread
    pool on: a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    out = subprocess.run(
        [sys.executable, "-c", CEILING, str(tokenizer), *corpus], env=env, check=True, capture_output=True, text=True
    )
    seconds, documents, tokens, cpu_s = json.loads(out.stdout)
    return seconds, documents, tokens, cpu_s


def same_files(a: str, b: str) -> bool:
    return all(Path(f"{a}.{s}").read_bytes() == Path(f"{b}.{s}").read_bytes() for s in ("bin", "idx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="glob of the JSONL files to tokenize")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer directory with tokenizer.json")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/megaphi-preprocess-bench"))
    parser.add_argument("--tasks", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--old-module", type=Path, default=None, help="an earlier data_tools/preprocess.py to time")
    parser.add_argument("--old-workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--no-ceiling", action="store_true", help="do not time the tokenizer alone")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    corpus = sorted(glob.glob(args.corpus))
    args.workdir.mkdir(parents=True, exist_ok=True)
    size = sum(os.path.getsize(p) for p in corpus)
    print(
        f"corpus: {len(corpus)} files, {size / 1e6:.1f} MB JSONL; {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"load average before: {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: dict[str, list[tuple[float, int, int]]] = {}  # name -> (seconds, documents, tokens without EODs)
    cpu: dict[str, list[float]] = {}  # name -> CPU seconds of this process and its workers (robust to load)
    outputs: dict[str, str] = {}
    old = load_module(args.old_module, "old_preprocess") if args.old_module else None
    for _ in range(args.repeats):
        if not args.no_ceiling:
            name = "tokenizer encode_batch_fast (ceiling)"
            seconds, documents, tokens, cpu_s = ceiling(args.tokenizer, corpus)
            rows.setdefault(name, []).append((seconds, documents, tokens))
            cpu.setdefault(name, []).append(cpu_s)
            print(name, rows[name][-1], f"{cpu_s:.1f} CPU s", flush=True)
        for tasks in args.tasks:
            name = f"data_tools.preprocess --tasks {tasks}"
            out = args.workdir / f"new-{tasks}"
            shutil.rmtree(f"{out}.datatrove", ignore_errors=True)
            before = cpu_seconds()
            result = preprocess(
                corpus, out, args.tokenizer, append_eod=True, progress=False, options=ExecutorOptions(tasks=tasks)
            )
            cpu.setdefault(name, []).append(cpu_seconds() - before)
            rows.setdefault(name, []).append((result.seconds, result.documents, result.tokens - result.documents))
            outputs[name] = result.prefixes["text"]
            print(name, rows[name][-1], f"{cpu[name][-1]:.1f} CPU s", flush=True)
        if old is None:
            continue
        for workers in args.old_workers:
            name = f"previous preprocess --workers {workers}"
            before = cpu_seconds()
            result = old.preprocess(
                corpus,
                args.workdir / f"old-{workers}",
                args.tokenizer,
                append_eod=True,
                workers=workers,
                progress=False,
            )
            cpu.setdefault(name, []).append(cpu_seconds() - before)
            rows.setdefault(name, []).append((result.seconds, result.documents, result.tokens - result.documents))
            outputs[name] = result.prefixes["text"]
            print(name, rows[name][-1], f"{cpu[name][-1]:.1f} CPU s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if outputs:
        first = next(iter(outputs.values()))
        print("outputs byte-identical:", all(same_files(first, other) for other in outputs.values()))
    ceiling_runs = rows.get("tokenizer encode_batch_fast (ceiling)", [])
    limit = max((t / s for s, _, t in ceiling_runs), default=float("nan"))
    print("\n| run | best s | documents/s | tokens/s | vs ceiling | CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in rows.items():
        seconds, documents, tokens = min(runs)
        cpu_text = f"{min(cpu[name]):.1f}" if name in cpu else ""
        print(
            f"| {name} | {seconds:.1f} | {documents / seconds:,.0f} | {tokens / seconds:,.0f} "
            f"| {100 * tokens / seconds / limit:.0f}% | {cpu_text} |"
        )


if __name__ == "__main__":
    main()
