"""Educational-value labels, and reading one out of a free-form model answer.

Annotators answer on one of two scales, both mapped onto the three levels the classifier learns
from: the words high / medium / low, or a 1-5 score (1-2 low, 3 medium, 4-5 high). A chatty model
rarely answers with the bare word, so the parser looks for, in order of trust:

1. a keyed verdict, "Educational value: high" or "Rating: 4/5" (the last one wins: models reason
   first and conclude last, as the prompt asks them to);
2. a score out of five anywhere, "4/5" or "4 out of 5" (again the last one);
3. exactly one level word in the whole answer ("... is of low value");
4. an answer that is nothing but a digit 1-5.

Anything else, including answers that name two different levels without a keyed verdict, is
unparseable: the caller files it as a failure with the raw answer instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from megaphi.common.errors import UserError

LEVELS = ("low", "medium", "high")
# words models use for the middle and ends of the scale
_SYNONYMS = {
    "moderate": "medium",
    "mid": "medium",
    "average": "medium",
    "medium": "medium",
    "high": "high",
    "low": "low",
}
_LEVEL_WORD = r"(high|medium|moderate|average|mid|low)"
_KEY = r"(?:educational[ _-]value|value|rating|score|label|verdict|grade|answer)"
_KEYED_LEVEL = re.compile(_KEY + r"[\s*_:=\-\"'`]*(?:is|of)?[\s*_:=\-\"'`]*" + _LEVEL_WORD + r"\b", re.IGNORECASE)
_KEYED_SCORE = re.compile(_KEY + r"[\s*_:=\-\"'`]*(?:is|of)?[\s*_:=\-\"'`]*([1-5])(?:\.0)?(?!\d|\.\d)", re.IGNORECASE)
_OUT_OF_FIVE = re.compile(r"(?<![\d.])([1-5])(?:\.0)?\s*(?:/|out\s+of)\s*5(?!\d|\.\d)", re.IGNORECASE)
_ANY_LEVEL = re.compile(r"\b" + _LEVEL_WORD + r"\b", re.IGNORECASE)
_BARE_DIGIT = re.compile(r"^\W*([1-5])\W*$")


class UnparseableLabel(ValueError):
    """An answer from which no educational-value level can be read without guessing."""


@dataclass(frozen=True)
class Label:
    level: str  # one of LEVELS
    score: int | None = None  # the 1-5 score when the answer gave one

    def to_dict(self) -> dict:
        return {"label": self.level, "score": self.score}


def level_of_score(score: int) -> str:
    if not 1 <= score <= 5:
        raise ValueError(f"score must be between 1 and 5, got {score}")
    return "low" if score <= 2 else "medium" if score == 3 else "high"


def parse_label(answer: str) -> Label:
    """The educational-value level an annotator's answer states; :class:`UnparseableLabel` if none."""
    text = answer.strip()
    keyed: list[tuple[int, str, int | None]] = [
        (m.start(), _SYNONYMS[m.group(1).lower()], None) for m in _KEYED_LEVEL.finditer(text)
    ]
    keyed += [(m.start(), level_of_score(int(m.group(1))), int(m.group(1))) for m in _KEYED_SCORE.finditer(text)]
    if keyed:
        _, level, score = max(keyed)
        return Label(level, score)
    scores = _OUT_OF_FIVE.findall(text)
    if scores:
        score = int(scores[-1])
        return Label(level_of_score(score), score)
    words = {_SYNONYMS[w.lower()] for w in _ANY_LEVEL.findall(text)}
    if len(words) == 1:
        return Label(words.pop())
    if (bare := _BARE_DIGIT.match(text)) is not None:
        score = int(bare.group(1))
        return Label(level_of_score(score), score)
    found = f"it names {sorted(words)}" if words else "it names no level"
    raise UnparseableLabel(
        f"no educational-value level in the answer ({found}; expected high/medium/low or a 1-5 score)"
    )


def parse_levels(names: str | list[str]) -> tuple[str, ...]:
    """Levels named on a command line ("high" or "medium,high"), checked against :data:`LEVELS`."""
    items = names.split(",") if isinstance(names, str) else [n for name in names for n in name.split(",")]
    levels = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    unknown = [level for level in levels if level not in LEVELS]
    if unknown or not levels:
        raise UserError(f"positive labels must be a non-empty subset of {LEVELS}, got {names!r}")
    if len(levels) == len(LEVELS):
        raise UserError(f"positive labels {levels} leave no negative class: name at most two of {LEVELS}")
    return levels
