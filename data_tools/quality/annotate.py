"""Label corpus files with their educational value: by an LLM (the paper's method) or offline.

Both annotators write the same JSONL, one line per document, keyed by the document id:
``{"id", "path", "sha1", "label", "score", "annotator", "raw"}`` where ``label`` is high / medium /
low, ``score`` the 1-5 score when the answer gave one, and ``raw`` the annotator's whole answer.
Runs are resumable: ids already in the annotation file or the failure log are not asked again.

The LLM annotator sends the prompt file (``{path}`` and ``{code}`` are filled in; the code cut to
``max_chars`` characters) through ``data_tools.llm``; an answer with no readable label is filed in
the failure log with the raw answer (``"texts"``), never defaulted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from data_tools.jsonl import OnError
from data_tools.quality import heuristic
from data_tools.quality.documents import Document, QualityError, corpus_files, sample_documents
from data_tools.quality.labels import Label, UnparseableLabel, parse_label

if TYPE_CHECKING:  # the openai client is imported only by the stage that talks to an endpoint
    from data_tools.llm import ClientConfig, LLMRequest, LLMResponse, RunStats

DEFAULT_PROMPT = Path(__file__).resolve().parent.parent / "prompts" / "quality_annotation.txt"
# ~2k tokens of code: the paper's annotator saw whole short files; long ones are judged by their start.
DEFAULT_MAX_CHARS = 8000
ANNOTATORS = ("llm", "heuristic")


@dataclass
class AnnotateOptions:
    limit: int | None = None  # annotate a random sample of this many documents (None: all)
    seed: int = 0
    max_chars: int = DEFAULT_MAX_CHARS
    text_key: str = "text"
    on_error: OnError = "stop"


def load_prompt_template(path: str | os.PathLike = DEFAULT_PROMPT) -> str:
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise QualityError(f"cannot read the annotation prompt {path}: {exc.strerror}") from None
    if "{code}" not in template:
        raise QualityError(f"annotation prompt {path} has no {{code}} placeholder: add one where the file goes")
    return template


def render_prompt(template: str, document: Document, max_chars: int) -> str:
    # str.replace, not str.format: code is full of braces.
    return template.replace("{path}", str(document.record.get("path", document.id))).replace(
        "{code}", document.text[:max_chars]
    )


def annotation_record(path: str | None, sha1: str, label: Label, annotator: str, raw: str) -> dict[str, Any]:
    return {"path": path, "sha1": sha1, **label.to_dict(), "annotator": annotator, "raw": raw}


def _documents(corpus: Sequence[str | os.PathLike], options: AnnotateOptions) -> Iterator[Document]:
    if options.max_chars < 1:
        raise QualityError(f"--max-chars must be at least 1, got {options.max_chars}")
    return sample_documents(
        corpus_files(corpus), options.limit, options.seed, text_key=options.text_key, on_error=options.on_error
    )


def annotate_with_llm(
    corpus: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    config: ClientConfig,
    *,
    prompt_path: str | os.PathLike = DEFAULT_PROMPT,
    options: AnnotateOptions = AnnotateOptions(),
    retry_failed: bool = False,
    progress: bool = True,
    max_tokens: int = 256,
) -> RunStats:
    """Ask the endpoint in ``config`` to label each (sampled) corpus document; see the module doc."""
    from data_tools.llm import LLMRequest, Rejected, failures_path_for, run_requests

    template = load_prompt_template(prompt_path)
    annotator = f"llm:{config.model}"

    def requests() -> Iterator[LLMRequest]:
        for document in _documents(corpus, options):
            yield LLMRequest(
                id=document.id,
                messages=[{"role": "user", "content": render_prompt(template, document, options.max_chars)}],
                max_tokens=max_tokens,
                temperature=0.0,
                meta={"path": document.record.get("path"), "sha1": document.sha1},
            )

    def process(request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
        try:
            label = parse_label(response.text)
        except UnparseableLabel as exc:
            raise Rejected(str(exc)) from None
        return annotation_record(request.meta["path"], request.meta["sha1"], label, annotator, response.text)

    return run_requests(
        requests(),
        Path(out_path),
        failures_path_for(Path(out_path)),
        config,
        process=process,
        retry_failed=retry_failed,
        progress=progress,
    )


def annotate_with_heuristic(
    corpus: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, options: AnnotateOptions = AnnotateOptions()
) -> RunStats:
    """Label each (sampled) document with the offline stand-in :mod:`data_tools.quality.heuristic`.

    Writes through the same append-only store as the LLM annotator, so its files resume the same way."""
    from data_tools.llm import ResultStore, RunStats, failures_path_for

    stats = RunStats()
    store = ResultStore(Path(out_path), failures_path_for(Path(out_path)))
    try:
        for document in _documents(corpus, options):
            stats.requested += 1
            if store.skip_finished(document.id, stats):
                continue
            label, raw = heuristic.annotate_text(document.text)  # whole file: cut code may not parse
            record = annotation_record(document.record.get("path"), document.sha1, label, heuristic.NAME, raw)
            store.write_result({"id": document.id, **record})
            stats.succeeded += 1
    finally:
        store.close()
    return stats
