"""`python -m model_build bench-scores --quick` runs end to end and reports both paths (no timing assertions)."""

from __future__ import annotations

import json

from tests.conftest import run_python


def test_quick_scores_bench_reports_decode_with_and_without_scores() -> None:
    out = run_python("-m", "model_build", "bench-scores", "--quick", "--runs", "1", "--threads", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert set(result["tasks"]) == {"caption", "detect"}
    for row in result["tasks"].values():
        for path in ("decode_without_scores", "decode_with_scores", "scoring_alone"):
            assert 0 < row[path]["min_ms"] <= row[path]["median_ms"]
        assert row["new_tokens"] > 0 and row["scoring_share_of_min_pct"] > 0
