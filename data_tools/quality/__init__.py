"""The educational-value quality filter of phi-1 (paper section 2.1): annotate, train, filter.

python -m data_tools.quality annotate --input data/stdlib-*.jsonl --out data/annotations.jsonl --base-url ...
python -m data_tools.quality train --input data/stdlib-*.jsonl --annotations data/annotations.jsonl --out runs/quality
python -m data_tools.quality filter --input data/stdlib-*.jsonl --classifier runs/quality --output-prefix data/edu
"""

from data_tools.quality.annotate import AnnotateOptions, annotate_with_heuristic, annotate_with_llm
from data_tools.quality.classifier import (
    Classifier,
    Metrics,
    TrainOptions,
    TrainResult,
    load_annotations,
    load_classifier,
    train_classifier,
)
from data_tools.quality.documents import QualityError
from data_tools.quality.filter import FilterReport, QualityFilterConfig, filter_corpus, stages
from data_tools.quality.labels import LEVELS, Label, UnparseableLabel, parse_label

__all__ = [
    "AnnotateOptions",
    "annotate_with_heuristic",
    "annotate_with_llm",
    "Classifier",
    "Metrics",
    "TrainOptions",
    "TrainResult",
    "load_annotations",
    "load_classifier",
    "train_classifier",
    "QualityError",
    "FilterReport",
    "QualityFilterConfig",
    "filter_corpus",
    "stages",
    "LEVELS",
    "Label",
    "UnparseableLabel",
    "parse_label",
]
