"""`model_build demo`'s last step: a real uvicorn on the artifact, the sample answers and the demo page's URL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from model_build.data.synth import write_val_split
from model_build.demo import call_api
from model_build.evaluate import split_records


def test_call_api_prints_scored_answers_and_the_demo_page_url(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    val = write_val_split(tmp_path / "val", count=1)
    record = split_records(val, "val2017", 1)[0]
    result = call_api(tiny_artifact, record.path, tmp_path / "out", keep_serving=False)
    printed = capsys.readouterr().out
    assert re.search(r"demo page:  http://127\.0\.0\.1:\d+/ ", printed), printed
    assert result["detections"] and all(0.0 <= d["score"] <= 1.0 for d in result["detections"])
    for det in result["detections"]:
        assert f"{det['label']:<10} score {det['score']:.2f}" in printed
    drawn = Image.open(tmp_path / "out" / "detections.png")
    assert drawn.size == (record.json["width"], record.json["height"])
