"""How diverse is a set of generated texts? A report for any JSONL of synthetic textbooks or exercises.

    python -m data_tools.synth report --input data/textbooks.jsonl data/exercises.jsonl --out-dir reports/synth

Writes ``diversity.json``, ``diversity.md`` and ``diversity.png`` to ``--out-dir`` with:
- distinct prompts used (records of ``data_tools.synth`` carry their prompt's hash in ``meta.prompt_sha1``),
- the near-duplicate rate among the outputs: exact and MinHash near duplicates at the dedup stage's
  settings (data_tools.dedup), the first occurrence counted as the original,
- distinct n-gram ratios (distinct-n: distinct word n-grams / all word n-grams, words as the dedup
  stage splits them), over a seeded sample of ``--ngram-sample`` records,
- embedding-space coverage over a seeded sample of ``--embed-sample`` records: the mean pairwise
  cosine distance of MiniLM embeddings (data_tools.embed) and the number of clusters that
  average-linkage clustering leaves at ``--cluster-distance``,
- histograms of the prompts' topics, subtopics, concepts, seeds, audiences and styles,
- for exercises: how many passed their own tests in the sandbox, read from the run's failure log
  (``OUT.failures.jsonl`` next to each input unless ``--failures`` names others).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.dedup import WORD, Deduplicator, DedupParams, exact_key, signature
from data_tools.embed import encode_with_progress, load_embedder
from data_tools.jsonl import ON_ERROR_CHOICES, OnError, expand_inputs, iter_records, record_id, record_text
from data_tools.llm import FAILURES_SUFFIX, failures_path_for
from data_tools.synth_exercises import NEAR_DUPLICATE
from megaphi.common.errors import UserError
from megaphi.common.files import atomic_open, atomic_write_text
from megaphi.progress import progress

META_FIELDS = ("topic", "subtopic", "concept", "seed_kind", "audience", "style")
REPORT_FILES = ("diversity.json", "diversity.md", "diversity.png")


@dataclass(frozen=True)
class ReportOptions:
    text_key: str = "text"
    ngram_orders: tuple[int, ...] = (1, 2, 3, 4)
    ngram_sample: int = 20_000  # distinct-n falls as a set grows: compare sets at the same sample size
    embedder: str | None = "minilm"  # data_tools.embed name or model path; None skips the embedding pass
    embed_sample: int = 2_000  # pairwise distances are O(n^2)
    # Cosine distance at which clusters stop merging. MiniLM puts texts on one programming subject at
    # about 0.2-0.4 from each other, so 0.3 separates subjects rather than lumping all code together.
    cluster_distance: float = 0.3
    dedup: DedupParams = field(default_factory=DedupParams)
    seed: int = 0
    on_error: OnError = "stop"
    examples: int = 10  # duplicate pairs listed in the report
    progress: bool = True

    def validate(self) -> None:
        if not self.ngram_orders or min(self.ngram_orders) < 1:
            raise UserError(f"n-gram orders must be positive, got {list(self.ngram_orders)}")
        if self.ngram_sample < 1 or self.embed_sample < 2:
            raise UserError("--ngram-sample must be at least 1 and --embed-sample at least 2")
        if not 0 < self.cluster_distance <= 2:
            raise UserError(f"--cluster-distance is a cosine distance in (0, 2], got {self.cluster_distance}")
        self.dedup.validate()


class Reservoir:
    """A uniform sample of ``size`` items of a stream (algorithm R), seeded; all of them, in order,
    when the stream is no longer than ``size``."""

    def __init__(self, size: int, seed: int):
        self.size, self.seen = size, 0
        self.items: list[Any] = []
        self._rng = random.Random(seed)

    def offer(self, item: Any) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            slot = self._rng.randrange(self.seen + 1)
            if slot < self.size:
                self.items[slot] = item
        self.seen += 1


def distinct_ngrams(texts: Sequence[str], orders: Sequence[int]) -> dict[str, dict[str, Any]]:
    """{"n": {"total", "distinct", "ratio"}} over all texts together (n-grams do not cross texts)."""
    out = {}
    tokenized = [WORD.findall(text) for text in texts]
    for n in orders:
        grams: set[tuple[str, ...]] = set()
        total = 0
        for words in tokenized:
            count = max(0, len(words) - n + 1)
            total += count
            grams.update(tuple(words[i : i + n]) for i in range(count))
        out[str(n)] = {"total": total, "distinct": len(grams), "ratio": round(len(grams) / total, 6) if total else None}
    return out


def embedding_coverage(vectors: np.ndarray, cluster_distance: float) -> dict[str, Any]:
    """Mean pairwise cosine distance of L2-normalised rows and the average-linkage cluster count."""
    n = len(vectors)
    if n < 2:
        return {"texts": n, "mean_pairwise_distance": None, "clusters": n, "distances": []}
    from sklearn.cluster import AgglomerativeClustering

    distances = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
    pairs = distances[np.triu_indices(n, k=1)]
    clustering = AgglomerativeClustering(
        n_clusters=None, distance_threshold=cluster_distance, metric="precomputed", linkage="average"
    ).fit(distances)
    return {
        "texts": n,
        "mean_pairwise_distance": round(float(pairs.mean()), 6),
        "clusters": int(clustering.n_clusters_),
        "cluster_distance": cluster_distance,
        "distances": pairs,
    }


def is_exercise(record: dict[str, Any]) -> bool:
    return "entry_point" in record and "test" in record


def exercise_validation(kept: int, failures: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What became of the exercises a run asked for: ``kept`` records and the run's failure log."""
    exercise_failures = [f for f in failures if "function_name" in (f.get("meta") or {})]
    if not kept and not exercise_failures:
        return None
    reasons: Counter[str] = Counter()
    unanswered = 0
    for failure in exercise_failures:
        reason = str(failure.get("reason", ""))
        if not reason.startswith("rejected: "):
            unanswered += 1  # the endpoint never answered: nothing to validate
            continue
        reasons[reason.removeprefix("rejected: ").split(":")[0].split(" (")[0]] += 1
    failed_tests = reasons["solution fails its own tests"]
    near = reasons[NEAR_DUPLICATE]
    answered = kept + sum(reasons.values())
    passed = kept + near  # a near duplicate passed its tests before it was dropped
    return {
        "answered": answered,
        "kept": kept,
        "passed_sandbox": passed,
        "failed_sandbox": failed_tests,
        "near_duplicates_dropped": near,
        "unanswered": unanswered,
        "sandbox_pass_rate": round(passed / (passed + failed_tests), 6) if passed + failed_tests else None,
        "kept_share": round(kept / answered, 6) if answered else None,
        "rejection_reasons": dict(reasons.most_common()),
    }


def diversity_report(
    input_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    failures_paths: Sequence[str | Path] | None = None,
    options: ReportOptions = ReportOptions(),
    embedder: Any = None,
) -> dict[str, Any]:
    """Measures the diversity of the generated records in ``input_paths`` and writes diversity.json,
    diversity.md and diversity.png to ``out_dir``; returns what the JSON holds. ``embedder`` is an
    already loaded data_tools.embed embedder (else ``options.embedder`` is loaded when needed)."""
    options.validate()
    # A glob over a run's outputs also matches its failure logs: those hold no text, only verdicts.
    files: list[Path] = []
    logs: list[Path] = []
    for path in expand_inputs(input_paths):
        (logs if path.name.endswith(FAILURES_SUFFIX) else files).append(path)
    if not files:
        raise UserError(
            f"inputs {[str(p) for p in input_paths]} are all failure logs ({FAILURES_SUFFIX}): give the generated JSONL"
        )
    if failures_paths is None:
        failures_paths = list(dict.fromkeys(logs + [p for p in map(failures_path_for, files) if p.exists()]))
    failures = list(iter_records(expand_inputs(failures_paths), on_error=options.on_error)) if failures_paths else []

    dedup = Deduplicator(options.dedup)
    prompts: Counter[str] = Counter()
    histograms: dict[str, Counter[str]] = {name: Counter() for name in META_FIELDS}
    ngram_sample = Reservoir(options.ngram_sample, options.seed)
    embed_sample = Reservoir(options.embed_sample, options.seed + 1)
    exact = near = 0
    examples: list[dict[str, Any]] = []
    exercises = records = 0
    scan = progress(
        iter_records(files, on_error=options.on_error), desc="diversity", unit="records", disable=not options.progress
    )
    for index, record in enumerate(scan):
        text = record_text(record, options.text_key, index)
        records += 1
        sig = signature(text, options.dedup.num_perm, options.dedup.ngram)
        # The position keeps names unique: two runs' outputs may reuse an id.
        verdict = dedup.check(f"{index}\t{record_id(record, index)}", exact_key(text), sig)
        if verdict is not None:
            exact += verdict["reason"] == "exact"
            near += verdict["reason"] == "near"
            if len(examples) < options.examples:
                examples.append(
                    {
                        "id": record_id(record, index),
                        "reason": verdict["reason"],
                        "duplicate_of": verdict["duplicate_of"].split("\t")[1],
                        "jaccard": verdict["jaccard"],
                    }
                )
        meta = record["meta"] if isinstance(record.get("meta"), dict) else {}
        if meta.get("prompt_sha1"):
            prompts[meta["prompt_sha1"]] += 1
        for name in META_FIELDS:
            if isinstance(meta.get(name), str):
                histograms[name][meta[name]] += 1
        exercises += is_exercise(record)
        ngram_sample.offer(text)
        embed_sample.offer(text)
    if not records:
        raise UserError(f"inputs {[str(p) for p in input_paths]} hold no records: nothing to report on")

    coverage = None
    if options.embedder is not None or embedder is not None:
        if embedder is None:
            embedder = load_embedder(str(options.embedder))
        vectors = (
            encode_with_progress(embedder, embed_sample.items)
            if options.progress
            else embedder.encode(embed_sample.items)
        )
        coverage = embedding_coverage(vectors, options.cluster_distance)
        coverage["embedder"] = getattr(embedder, "name", str(options.embedder))
    distances = coverage.pop("distances") if coverage else []

    report = {
        "inputs": [str(p) for p in files],
        "failure_logs": [str(p) for p in failures_paths],
        "records": records,
        "prompts": {
            "with_prompt_hash": sum(prompts.values()),
            "distinct": len(prompts) if prompts else None,
            "most_uses": max(prompts.values()) if prompts else None,
        },
        "near_duplicates": {
            "exact": exact,
            "near": near,
            "rate": round((exact + near) / records, 6),
            **{k: v for k, v in asdict(options.dedup).items() if k != "text_key"},
            "examples": examples,
        },
        "distinct_ngrams": {
            "records": len(ngram_sample.items),
            **distinct_ngrams(ngram_sample.items, options.ngram_orders),
        },
        "embedding": coverage,
        "histograms": {name: dict(counts.most_common()) for name, counts in histograms.items() if counts},
        "exercises": exercise_validation(exercises, failures),
        "options": {k: v for k, v in asdict(options).items() if k != "dedup"},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["files"] = [str(out_dir / name) for name in REPORT_FILES]
    atomic_write_text(out_dir / "diversity.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "diversity.md", markdown(report))
    plot(report, distances, out_dir / "diversity.png")
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Diversity of the synthetic data",
        "",
        f"{report['records']:,} records from " + ", ".join(f"`{p}`" for p in report["inputs"]) + ".",
        "",
    ]
    p = report["prompts"]
    if p["distinct"] is None:
        lines += ["- Distinct prompts: unknown (no record carries `meta.prompt_sha1`)"]
    else:
        lines += [
            f"- Distinct prompts: {p['distinct']:,} over {p['with_prompt_hash']:,} records "
            f"(at most {p['most_uses']} records per prompt)"
        ]
    d = report["near_duplicates"]
    lines += [
        f"- Near duplicates: {d['exact'] + d['near']:,} of {report['records']:,} ({d['rate']:.2%}): "
        f"{d['exact']} exact, {d['near']} MinHash (Jaccard >= {d['threshold']}, {d['ngram']}-word shingles, "
        f"{d['num_perm']} permutations)"
    ]
    e = report["embedding"]
    if e is None:
        lines += ["- Embedding coverage: not measured"]
    else:
        mean = "n/a" if e["mean_pairwise_distance"] is None else f"{e['mean_pairwise_distance']:.4f}"
        lines += [
            f"- Embedding coverage ({e['embedder']}, {e['texts']:,} texts): mean pairwise cosine distance "
            f"{mean}; clusters at distance {report['options']['cluster_distance']}: {e['clusters']}"
        ]
    x = report["exercises"]
    if x is not None:
        rate = "n/a" if x["sandbox_pass_rate"] is None else f"{x['sandbox_pass_rate']:.2%}"
        lines += [
            f"- Exercises: {x['kept']:,} kept of {x['answered']:,} answered; {x['passed_sandbox']:,} passed "
            f"their own tests in the sandbox ({rate} of those run), {x['near_duplicates_dropped']} dropped as "
            f"near duplicates, {x['unanswered']} never answered"
        ]
    n = report["distinct_ngrams"]
    lines += [
        "",
        f"## Distinct n-grams ({n['records']:,} records)",
        "",
        "| n | distinct | total | ratio |",
        "|---|---:|---:|---:|",
    ]
    for order, row in ((k, v) for k, v in n.items() if k != "records"):
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.4f}"
        lines.append(f"| {order} | {row['distinct']:,} | {row['total']:,} | {ratio} |")
    for name, counts in report["histograms"].items():
        lines += ["", f"## {name} ({len(counts)} distinct)", "", "| value | records |", "|---|---:|"]
        lines += [f"| {value} | {count} |" for value, count in list(counts.items())[:20]]
        if len(counts) > 20:
            lines.append(f"| ... {len(counts) - 20} more | |")
    if d["examples"]:
        lines += ["", "## Duplicate examples", "", "| record | duplicate of | kind | Jaccard |", "|---|---|---|---:|"]
        lines += [f"| {x['id']} | {x['duplicate_of']} | {x['reason']} | {x['jaccard']} |" for x in d["examples"]]
    if x is not None and x["rejection_reasons"]:
        lines += ["", "## Exercise rejections", "", "| reason | count |", "|---|---:|"]
        lines += [f"| {reason} | {count} |" for reason, count in x["rejection_reasons"].items()]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], distances: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ngrams, topics, spread) = plt.subplots(1, 3, figsize=(15, 4))
    rows = {k: v for k, v in report["distinct_ngrams"].items() if k != "records"}
    ngrams.bar(list(rows), [v["ratio"] or 0 for v in rows.values()], color="tab:blue")
    ngrams.set(title="distinct n-grams / all n-grams", xlabel="n", ylim=(0, 1))
    name = next((n for n in ("topic", "seed_kind", "concept") if n in report["histograms"]), None)
    if name:
        counts = list(report["histograms"][name].items())[:15]
        topics.barh([str(k)[:40] for k, _ in counts][::-1], [v for _, v in counts][::-1], color="tab:green")
        topics.set(title=f"records per {name} (top {len(counts)})")
        topics.tick_params(axis="y", labelsize=7)
    else:
        topics.text(0.5, 0.5, "no topic in the records' meta", ha="center", va="center")
        topics.set_axis_off()
    if len(distances):
        spread.hist(distances, bins=40, range=(0, max(1.0, float(np.max(distances)))), color="tab:orange")
        spread.set(title="pairwise cosine distance of embeddings", xlabel="distance", ylabel="pairs")
    else:
        spread.text(0.5, 0.5, "embeddings not measured", ha="center", va="center")
        spread.set_axis_off()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, help="generated JSONL files, globs or directories")
    parser.add_argument("--out-dir", required=True, help="where diversity.json, .md and .png go")
    parser.add_argument("--failures", nargs="*", help="failure logs (default: INPUT.failures.jsonl next to each)")
    parser.add_argument("--text-key", default="text", help="record field holding the generated text")
    parser.add_argument("--ngram-sample", type=int, default=ReportOptions.ngram_sample)
    parser.add_argument("--embedder", default="minilm", help="data_tools.embed embedder ('minilm' or a model dir)")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the embedding-space coverage")
    parser.add_argument("--embed-sample", type=int, default=ReportOptions.embed_sample)
    parser.add_argument("--cluster-distance", type=float, default=ReportOptions.cluster_distance)
    parser.add_argument("--threshold", type=float, default=DedupParams.threshold, help="near-duplicate Jaccard")
    parser.add_argument("--num-perm", type=int, default=DedupParams.num_perm)
    parser.add_argument("--ngram", type=int, default=DedupParams.ngram, help="words per MinHash shingle")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="stop")
    parser.add_argument("--no-progress", action="store_true")


def run_report_command(args: argparse.Namespace) -> int:
    options = ReportOptions(
        text_key=args.text_key,
        ngram_sample=args.ngram_sample,
        embedder=None if args.no_embeddings else args.embedder,
        embed_sample=args.embed_sample,
        cluster_distance=args.cluster_distance,
        seed=args.seed,
        on_error=args.on_error,
        progress=not args.no_progress,
        dedup=DedupParams(threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram, text_key=args.text_key),
    )
    report = diversity_report(args.input, args.out_dir, failures_paths=args.failures, options=options)
    print(markdown(report), end="")
    print(f"wrote {', '.join(report['files'])}", file=sys.stderr)
    return 0
