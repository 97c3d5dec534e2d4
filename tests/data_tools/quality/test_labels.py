"""Reading an educational-value label out of an annotator's answer."""

from __future__ import annotations


import pytest

from data_tools.quality.labels import Label, UnparseableLabel, parse_label


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("high", Label("high")),
        ("The code is tidy.\n\nEducational value: **Medium**", Label("medium")),
        ("It has few comments, so not high; the value is low.", Label("low")),
        ("Rating: 4/5 - clear names and docstrings.", Label("high", 4)),
        ("I would give this 2 out of 5.", Label("low", 2)),
        ("  3  ", Label("medium", 3)),
        ("Score: 5.", Label("high", 5)),
        ("This is of moderate use to a beginner.", Label("medium")),
        ("At first glance the value looks high, but on reflection...\nEducational value: low", Label("low")),
    ],
)
def test_parse_label_reads_levels_and_scores_from_chatty_answers(answer, expected):
    assert parse_label(answer) == expected


@pytest.mark.parametrize(
    "answer", ["It depends on the student.", "Parts are high quality, parts are low quality.", "7", ""]
)
def test_parse_label_refuses_to_guess(answer):
    with pytest.raises(UnparseableLabel, match="no educational-value level"):
        parse_label(answer)
