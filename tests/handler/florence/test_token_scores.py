"""The box codec at token level: scored detections read from token pieces agree with the text codec."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handler.florence.tasks import (
    Detection,
    above_score,
    caption_score,
    detection_score,
    parse_detections,
    parse_scored_detections,
    serialize_detections,
)
from handler.service import parse_min_score

LABELS = ["circle", "red square", "traffic light", "ünïcødé cat"]


def _pieces(text: str) -> list[str]:
    """Split generated text the way a tokenizer might: markup whole, words cut into 1..3-character pieces."""
    pieces: list[str] = []
    for part in re.split(r"(<[^<>]*>)", text):
        if part.startswith("<"):
            pieces.append(part)
        else:
            pieces.extend(part[i : i + 3] for i in range(0, len(part), 3))
    return [p for p in pieces if p]


@settings(max_examples=150, deadline=None)
@given(
    boxes=st.lists(
        st.tuples(st.sampled_from(LABELS), *[st.floats(0, 1)] * 4),
        min_size=0,
        max_size=6,
    ),
    data=st.data(),
)
def test_token_parse_matches_text_parse_and_scores_are_token_means(boxes, data) -> None:
    width, height = 640, 480
    detections = []
    for label, a, b, c, d in boxes:
        x0, x1 = sorted((a * width, c * width))
        y0, y1 = sorted((b * height, d * height))
        detections.append(Detection(label, (x0, y0, x1, y1)))
    text = "</s><s>" + serialize_detections(detections, width, height) + "</s>"
    pieces = _pieces(text)
    probabilities = data.draw(st.lists(st.floats(0, 1), min_size=len(pieces), max_size=len(pieces)))
    scored = parse_scored_detections(pieces, probabilities, width, height)
    expected = parse_detections(text, width, height)
    assert [(d.label, d.box) for d in scored] == [(d.label, d.box) for d in expected]
    # Each detection's score is the mean over its own label pieces and four location tokens.
    ends = [i for i, p in enumerate(pieces) if p.startswith("<loc_")][3::4]
    for detection, end in zip(scored, ends, strict=True):
        start = end - 3
        while start > 0 and not pieces[start - 1].startswith("<"):
            start -= 1
        assert detection.score == round(detection_score(probabilities[start : end + 1]), 4)
        assert 0.0 <= detection.score <= 1.0


def test_malformed_runs_are_skipped_and_label_text_decodes_spans_together() -> None:
    pieces = ["<s>", "cir", "cle", "<loc_1>", "<loc_2>", "sq", "<loc_1>", "<loc_2>", "<loc_3>", "<loc_4>", "<loc_5>"]
    pieces += ["do", "g", "<loc_100>", "<loc_200>", "<loc_300>", "<loc_400>", "</s>"]
    probabilities = [0.5] * 11 + [1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.9]
    spans: list[tuple[int, int]] = []

    def label_text(start: int, end: int) -> str:
        spans.append((start, end))
        return "".join(pieces[start:end]).upper()

    found = parse_scored_detections(pieces, probabilities, 1000, 1000, label_text)
    # `cir cle` has two locations only, the 5th location after `sq` belongs to no label
    assert [d.label for d in found] == ["SQ", "DOG"] and spans == [(5, 6), (11, 13)]
    assert found[1].box == (100.5, 200.5, 300.5, 400.5)
    assert found[1].score == 0.5  # (1.0 + 0.8 + 0.6 + 0.4 + 0.2 + 0.0) / 6
    with pytest.raises(ValueError, match="probabilities"):
        parse_scored_detections(pieces, probabilities[:-1], 1000, 1000)


def test_above_score_and_caption_score() -> None:
    boxes = [Detection("a", (0, 0, 1, 1), 0.2), Detection("b", (0, 0, 1, 1), 0.7), Detection("c", (0, 0, 1, 1), 0.5)]
    assert [d.label for d in above_score(boxes, 0.5)] == ["b", "c"]
    assert above_score(boxes, 0.0) == boxes and above_score(boxes, 0.71) == []
    assert caption_score(["<s>", "a", " cat", "</s>"], [0.1, 0.9, 0.7, 0.0]) == pytest.approx(0.8)
    assert caption_score(["<s>", "</s>"], [0.5, 0.5]) is None
    assert Detection("a", (0, 0, 1, 1), 0.123456).as_dict()["score"] == 0.1235


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 0.3), ("", 0.3), (0, 0.0), (1, 1.0), ("0.25", 0.25), (0.5, 0.5)]
)
def test_min_score_accepts_numbers_and_numeric_strings(value, expected) -> None:
    assert parse_min_score(value, default=0.3) == expected


@pytest.mark.parametrize("value", [-0.01, 1.01, "nan", "inf", "high", True, [0.5], {"x": 1}])
def test_min_score_refuses_anything_else_with_a_422(value) -> None:
    from handler.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="min_score"):
        parse_min_score(value)
