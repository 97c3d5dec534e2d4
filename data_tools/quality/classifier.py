"""The educational-value classifier: a random forest over file embeddings (paper section 2.1).

Annotated documents are embedded (``data_tools.embed``: MiniLM by default, or mean-pooled hidden
states of a megaphi / Hugging Face model as the paper did with a code model), labelled positive when
their annotation is one of ``positive_labels`` (default: high), split into train and held-out test
sets (stratified), and a scikit-learn RandomForestClassifier is fitted on the train part. Precision,
recall and F1 of the positive class on the held-out part are reported and saved with the model.

Long files are embedded by their start: the text is cut to ``embed_max_chars`` characters, and the
embedder then reads at most its own window (MiniLM: the first 256 word pieces; a causal LM: the
first 512 tokens).

A classifier is a directory: ``classifier.joblib`` (the fitted forest) and ``classifier.json``
(embedder, threshold, positive labels, metrics, counts), which ``filter`` reads back.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from data_tools.embed import DEVICES
from data_tools.jsonl import MalformedRecordError, OnError, iter_jsonl
from data_tools.quality.documents import Document, QualityError, corpus_files, iter_documents
from data_tools.quality.labels import LEVELS
from megaphi.common.files import atomic_write_text

FORMAT = "megaphi-quality-classifier"
MODEL_FILE, META_FILE = "classifier.joblib", "classifier.json"
DEFAULT_EMBED_MAX_CHARS = 8192  # far beyond MiniLM's 256 word pieces; spares tokenizing megabyte files


@dataclass
class TrainOptions:
    embedder: str = "minilm"
    positive_labels: tuple[str, ...] = ("high",)
    test_fraction: float = 0.2
    n_estimators: int = 200
    max_depth: int | None = None
    threshold: float = 0.5  # on the forest's positive-class probability
    seed: int = 0
    embed_max_chars: int = DEFAULT_EMBED_MAX_CHARS
    device: str = "auto"  # embedding device (data_tools.embed.resolve_device)
    text_key: str = "text"
    on_error: OnError = "stop"

    def validate(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise QualityError(f"--test-fraction must be between 0 and 1, got {self.test_fraction}")
        if not 0.0 <= self.threshold <= 1.0:
            raise QualityError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.n_estimators < 1:
            raise QualityError(f"--n-estimators must be at least 1, got {self.n_estimators}")
        if self.embed_max_chars < 1:
            raise QualityError(f"--embed-max-chars must be at least 1, got {self.embed_max_chars}")
        if self.device not in DEVICES:
            raise QualityError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        unknown = [label for label in self.positive_labels if label not in LEVELS]
        if unknown or not self.positive_labels or len(set(self.positive_labels)) == len(LEVELS):
            raise QualityError(f"positive labels must be one or two of {LEVELS}, got {self.positive_labels}")


@dataclass
class Metrics:
    """Held-out scores of the positive ("educational") class at the saved threshold."""

    precision: float
    recall: float
    f1: float
    accuracy: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    roc_auc: float | None = None

    @property
    def support(self) -> int:
        return self.true_positives + self.false_negatives

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "support": self.support}


@dataclass
class TrainResult:
    out_dir: Path
    metrics: Metrics
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.metrics
        return (
            f"held-out precision {m.precision:.3f} recall {m.recall:.3f} F1 {m.f1:.3f} accuracy {m.accuracy:.3f} "
            f"({self.metadata['train_size']} train / {self.metadata['test_size']} test files); "
            f"classifier saved to {self.out_dir}"
        )


def load_annotations(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """Annotation records by document id, from one or more annotation JSONL files (a later file's
    annotation of the same id wins)."""
    annotations: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not Path(path).is_file():
            raise QualityError(
                f"annotation file {path} does not exist: run `python -m data_tools.quality annotate` "
                "first or fix the path"
            )
        try:
            for number, record in enumerate(iter_jsonl(path), 1):
                if not isinstance(record.get("id"), str) or record.get("label") not in LEVELS:
                    raise QualityError(
                        f"{path}:{number}: not an annotation (needs a string 'id' and a 'label' in "
                        f"{LEVELS}); is this the annotation file and not its failure log?"
                    )
                annotations[record["id"]] = record
        except MalformedRecordError as exc:
            raise QualityError(str(exc)) from None
    if not annotations:
        raise QualityError(f"annotation file(s) {', '.join(map(str, paths))} hold no annotations")
    return annotations


def join_annotations(
    documents: Iterable[Document], annotations: dict[str, dict[str, Any]]
) -> list[tuple[Document, str]]:
    """(document, label) for every annotation, checked to name a corpus document with the same text."""
    found: dict[str, Document] = {}
    for document in documents:
        if document.id in annotations:
            found[document.id] = document
    missing = [doc_id for doc_id in annotations if doc_id not in found]
    if missing:
        raise QualityError(
            f"{len(missing)} of {len(annotations)} annotations name no document of the corpus "
            f"(first: {missing[0]!r}); annotate this corpus, or pass the corpus they were made on"
        )
    changed = [
        doc_id for doc_id, document in found.items() if annotations[doc_id].get("sha1") not in (None, document.sha1)
    ]
    if changed:
        raise QualityError(
            f"{len(changed)} annotated documents have changed text since they were annotated "
            f"(first: {changed[0]!r}); annotate them again"
        )
    return [(found[doc_id], annotations[doc_id]["label"]) for doc_id in annotations]


def check_classes(labels: np.ndarray, positive_labels: Sequence[str], test_fraction: float) -> None:
    """Both classes must be present, often enough to be split into train and test sets."""
    counts = Counter(bool(v) for v in labels)
    names = {True: f"positive ({'/'.join(positive_labels)})", False: "negative (the other labels)"}
    for cls in (True, False):
        if counts[cls] == 0:
            raise QualityError(
                f"all {len(labels)} annotated documents are {names[not cls]}: a classifier needs both "
                f"classes; annotate more files or change --positive-labels"
            )
    for cls in (True, False):
        in_test = int(counts[cls] * test_fraction)
        if in_test < 1 or counts[cls] - in_test < 1:
            raise QualityError(
                f"only {counts[cls]} {names[cls]} documents: too few to hold out a test fraction of "
                f"{test_fraction}; annotate more files"
            )


def evaluate(probabilities: np.ndarray, truth: np.ndarray, threshold: float) -> Metrics:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    predicted = probabilities >= threshold
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average="binary", zero_division=0)
    tn, fp, fn, tp = confusion_matrix(truth, predicted, labels=[False, True]).ravel()
    auc = float(roc_auc_score(truth, probabilities)) if len(set(truth.tolist())) == 2 else None
    return Metrics(
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        accuracy=float((tp + tn) / len(truth)),
        true_positives=int(tp),
        false_positives=int(fp),
        false_negatives=int(fn),
        true_negatives=int(tn),
        roc_auc=auc,
    )


def embed_texts(embedder: Any, texts: Sequence[str], max_chars: int, show_progress: bool = False) -> np.ndarray:
    texts = [text[:max_chars] for text in texts]
    if show_progress:
        from data_tools.embed import encode_with_progress

        return encode_with_progress(embedder, texts, desc="embed annotated files")
    return embedder.encode(texts)


def positive_probability(forest: Any, vectors: np.ndarray) -> np.ndarray:
    """The forest's probability of the positive class for each row."""
    column = list(forest.classes_).index(True)
    return forest.predict_proba(vectors)[:, column]


def train_classifier(
    corpus: Sequence[str | os.PathLike],
    annotation_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: TrainOptions = TrainOptions(),
    *,
    embedder: Any = None,
) -> TrainResult:
    """Embed the annotated documents, fit and evaluate the forest, and save the classifier directory.

    Every input check (annotation files, their match with the corpus, both classes present) runs
    before the embedder is loaded, so bad inputs fail in seconds."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    options.validate()
    annotations = load_annotations(annotation_paths)
    files = corpus_files(corpus)
    pairs = join_annotations(iter_documents(files, text_key=options.text_key, on_error=options.on_error), annotations)
    labels = np.array([label in options.positive_labels for _, label in pairs])
    check_classes(labels, options.positive_labels, options.test_fraction)

    if embedder is None:
        from data_tools.embed import load_embedder

        embedder = load_embedder(options.embedder, options.device)
    vectors = embed_texts(
        embedder, [document.text for document, _ in pairs], options.embed_max_chars, show_progress=True
    )
    indices = np.arange(len(pairs))
    train_idx, test_idx = train_test_split(
        indices, test_size=options.test_fraction, random_state=options.seed, stratify=labels
    )
    forest = RandomForestClassifier(
        n_estimators=options.n_estimators,
        max_depth=options.max_depth,
        class_weight="balanced",
        random_state=options.seed,
        n_jobs=1,
    )
    forest.fit(vectors[train_idx], labels[train_idx])
    metrics = evaluate(positive_probability(forest, vectors[test_idx]), labels[test_idx], options.threshold)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(forest, out_dir / MODEL_FILE)
    metadata = {
        "format": FORMAT,
        "embedder": getattr(embedder, "name", options.embedder),
        "embedding_dim": int(vectors.shape[1]),
        "embed_max_chars": options.embed_max_chars,
        "threshold": options.threshold,
        "positive_labels": list(options.positive_labels),
        "metrics": metrics.to_dict(),
        "train_size": len(train_idx),
        "test_size": len(test_idx),
        "test_ids": [pairs[i][0].id for i in test_idx],
        "label_counts": dict(Counter(label for _, label in pairs)),
        "annotators": dict(Counter(annotations[document.id].get("annotator", "unknown") for document, _ in pairs)),
        "forest": {
            "n_estimators": options.n_estimators,
            "max_depth": options.max_depth,
            "seed": options.seed,
            "test_fraction": options.test_fraction,
        },
    }
    atomic_write_text(out_dir / META_FILE, json.dumps(metadata, indent=2) + "\n")
    return TrainResult(out_dir, metrics, metadata)


@dataclass
class Classifier:
    """A saved classifier with its embedder, ready to score texts."""

    forest: Any
    metadata: dict[str, Any]
    embedder: Any = None

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    def load_embedder(self, device: str = "auto") -> None:
        """Load the embedder the classifier was trained on, on ``device`` (auto, cpu or cuda)."""
        if self.embedder is None:
            from data_tools.embed import load_embedder

            self.embedder = load_embedder(self.metadata["embedder"], device)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Probability that each text is educational (the positive class)."""
        if not texts:
            return np.zeros(0)
        self.load_embedder()
        return positive_probability(self.forest, embed_texts(self.embedder, texts, self.metadata["embed_max_chars"]))


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Read a classifier directory written by :func:`train_classifier` (the embedder loads on first use)."""
    import joblib

    path = Path(path)
    meta_path, model_path = path / META_FILE, path / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise QualityError(
            f"{path} is not a quality classifier (no {META_FILE} and {MODEL_FILE}): "
            "run `python -m data_tools.quality train` first"
        )
    metadata = json.loads(meta_path.read_text())
    if metadata.get("format") != FORMAT:
        raise QualityError(f"{meta_path} is not a {FORMAT} file (format {metadata.get('format')!r})")
    return Classifier(joblib.load(model_path), metadata)
