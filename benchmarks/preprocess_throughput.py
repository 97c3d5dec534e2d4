"""Preprocessing throughput against the raw tokenizer limit, on the standard-library corpus.

The raw limit is ``tokenizers``' ``encode_batch`` over the same texts already in memory, with its
own thread pool on every core and the token ids read out (nothing can preprocess faster without a
faster tokenizer). ``data_tools.preprocess`` is timed end to end: reading JSONL, parsing, tokenizing
in worker processes, writing ``.bin/.idx``. Runs alternate and the best of ``--repeats`` counts, so
that other load on a shared machine distorts the comparison as little as possible.

    python benchmarks/preprocess_throughput.py --workdir /tmp/ppbench --repeats 3
    python benchmarks/preprocess_throughput.py --megatron-lm /path/to/Megatron-LM   # also time its tool
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.corpus import build_corpus  # noqa: E402
from data_tools.preprocess import preprocess  # noqa: E402
from data_tools.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from megaphi.data import IndexedDataset  # noqa: E402


def raw_limit(tokenizer_dir: Path, texts_file: Path, method: str) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and tokens for the tokenizer alone (in a fresh process, so that its
    thread pool is on)."""
    code = f"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file({str(tokenizer_dir / "tokenizer.json")!r})
texts = json.load(open(sys.argv[1]))
start, cpu = time.perf_counter(), time.process_time()
tokens = sum(len(e.ids) for e in tok.{method}(texts, add_special_tokens=False))
print(json.dumps([time.perf_counter() - start, time.process_time() - cpu, tokens]))
"""
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(texts_file)], env=env, check=True, capture_output=True, text=True
    ).stdout
    return tuple(json.loads(out))


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the preprocessing workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def megatron_lm(repo: Path, corpus: Path, tokenizer_dir: Path, output: Path, workers: int) -> float:
    """Wall seconds of Megatron-LM's tools/preprocess_data.py with the same tokenizer and flags."""
    cmd = [
        sys.executable,
        str(repo / "tools" / "preprocess_data.py"),
        "--input",
        str(corpus),
        "--output-prefix",
        str(output),
        "--tokenizer-type",
        "HuggingFaceTokenizer",
        "--tokenizer-model",
        str(tokenizer_dir),
        "--append-eod",
        "--workers",
        str(workers),
        "--log-interval",
        "1000000",
    ]
    # the checkout first, then whatever the caller adds (Megatron-LM's own dependencies, e.g. triton, six)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/megaphi-preprocess-bench"))
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer dir (default: train a 50257+38 BPE on the corpus)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--megatron-lm", type=Path, default=None, help="a Megatron-LM checkout to time tools/preprocess_data.py"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    corpus = args.workdir / "stdlib-00000-00000.jsonl"  # one task's first shard
    if not corpus.exists():
        build_corpus([], args.workdir / "stdlib", progress=False)
    texts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
    texts_file = args.workdir / "texts.json"
    texts_file.write_text(json.dumps(texts))
    tokenizer_dir = args.tokenizer or args.workdir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        train_bpe(texts, tokenizer_dir, vocab_size=50257, show_progress=False)
    tok = load_tokenizer(tokenizer_dir)
    print(
        f"corpus: {len(texts)} files, {corpus.stat().st_size / 1e6:.1f} MB; tokenizer vocab {tok.vocab_size}; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )

    runs: dict[str, list[float]] = {}  # wall seconds
    cpu: dict[str, list[float]] = {}  # CPU seconds, robust to other load on a shared machine
    tokens: dict[str, int] = {}
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    for _ in range(args.repeats):
        for method in ("encode_batch", "encode_batch_fast"):
            seconds, cpu_s, tokens[f"raw {method}"] = raw_limit(tokenizer_dir, texts_file, method)
            runs.setdefault(f"raw {method}", []).append(seconds)
            cpu.setdefault(f"raw {method}", []).append(cpu_s)
            print(f"raw {method}: {seconds:.2f}s wall, {cpu_s:.2f}s CPU", flush=True)
        for workers in args.workers:
            name = f"data_tools.preprocess --workers {workers}"
            before = cpu_seconds()
            result = preprocess(
                [corpus],
                args.workdir / f"out-w{workers}",
                tokenizer_dir,
                append_eod=True,
                workers=workers,
                progress=False,
            )
            runs.setdefault(name, []).append(result.seconds)
            cpu.setdefault(name, []).append(cpu_seconds() - before)
            print(f"{name}: {result.seconds:.2f}s wall, {cpu[name][-1]:.2f}s CPU", flush=True)
            tokens[name] = result.tokens - result.documents  # without the appended EODs, as the raw runs
        if args.megatron_lm:
            name = f"Megatron-LM preprocess_data.py --workers {args.workers[0]}"
            runs.setdefault(name, []).append(
                megatron_lm(args.megatron_lm, corpus, tokenizer_dir, args.workdir / "megatron", args.workers[0])
            )
            tokens[name] = tokens[f"data_tools.preprocess --workers {args.workers[0]}"]
    if args.megatron_lm:
        ours = IndexedDataset(args.workdir / f"out-w{args.workers[0]}_text_document")
        theirs = IndexedDataset(args.workdir / "megatron_text_document")
        same = (ours.tokens() == theirs.tokens()).all() and (ours.sequence_lengths == theirs.sequence_lengths).all()
        print(f"Megatron-LM output identical to ours: {bool(same)}")

    print(f"load average after: {os.getloadavg()[0]:.1f}")
    limit = max(tokens["raw encode_batch"] / min(runs["raw encode_batch"]), 1e-9)
    cpu_limit = tokens["raw encode_batch"] / min(cpu["raw encode_batch"])
    print("\n| run | best wall s | median wall s | tokens/s (best wall) | vs raw | tokens per CPU-s (best) | vs raw |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds in runs.items():
        rate = tokens[name] / min(seconds)
        cpu_rate = tokens[name] / min(cpu[name]) if name in cpu else float("nan")
        print(
            f"| {name} | {min(seconds):.2f} | {statistics.median(seconds):.2f} | {rate:,.0f} | {100 * rate / limit:.0f}% "
            f"| {cpu_rate:,.0f} | {100 * cpu_rate / cpu_limit:.0f}% |"
        )


if __name__ == "__main__":
    main()
