"""`python -m model_build bench --quick` runs end to end (ORT peer included) and writes a sane report (no timing assertions)."""

from __future__ import annotations

import json

from tests.conftest import REPO_ROOT, run_python

ROOT = REPO_ROOT


def test_quick_bench_writes_json_markdown_and_chart(tmp_path):
    out = run_python("-m", "model_build", "bench", "--quick", "--threads", "1", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert result["quick"] is True
    assert [row["name"] for row in result["latency"]] == ["caption", "detect", "caption+detect", "vision tower"]
    for row in result["latency"]:
        for path in ("baseline", "served"):
            stats = row[path]
            assert stats["runs"] == 2 and 0 < stats["min_s"] <= stats["median_s"] <= stats["p90_s"]
        assert row["speedup"] == row["baseline"]["median_s"] / row["served"]["median_s"]
    served_cold = result["served_cold"]
    assert served_cold["transformers_imported"] is False and result["baseline_cold"]["transformers_imported"] is True
    assert served_cold["first_caption_s"] > served_cold["import_torch_s"] > 0
    assert result["served_artifact_mib"] > 0 and served_cold["peak_rss_mib"] > 0
    # The ORT peer ran on the same units of work (the step in a run and alone), and its int8 image
    # features are close to fp32's.
    assert len(result["peers"]) == 3 and "in a row" in result["peers"][1]["name"]
    for peer in result["peers"]:
        assert peer["baseline_s"] > 0 and peer["served_s"] > 0 and peer["ort_s"] > 0
    assert result["peer_info"]["vision_cosine_to_fp32"]["ort"] > 0.99
    floor = result["decode"]["floor"]
    assert floor["bandwidth_gb_s"] > 0 and floor["bytes_per_token"] > 0 and floor["floor_ms"] > 0
    assert result["decode_floor_multiple"] == result["decode"]["per_token_ms"] / floor["floor_ms"]
    rows = result["fidelity"]["rows"]
    assert {(r["task"], r["path"]) for r in rows} == {
        (t, p) for t in ("caption", "detect") for p in ("baseline", "served")
    }
    assert all(r["mean_kl"] >= 0 and 0 <= r["top1_agreement"] <= 1 for r in rows)
    page = (tmp_path / "benchmarks.md").read_text()
    assert "| caption |" in page and "Hardware:" in page and "ONNX Runtime" in page and "Decode floor" in page
    assert (tmp_path / "benchmarks.png").read_bytes()[:4] == b"\x89PNG"
