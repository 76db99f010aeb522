"""`python -m model_build rehearse`: every stage in its own process, the figures, the report and the clean-up.

The reduced-size run (the native layout at the tiny model's widths) runs in CI; the full-size one takes
about a minute and 3 GiB on 2 cores and runs only with RUN_REHEARSAL=1 (docs/build.md, "Full-size rehearsal").
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from model_build.bench.baseline import BASE_VOCAB, NATIVE_EMBEDDING_ROWS
from model_build.rehearsal.pipeline import REPORT_FILE, STAGES
from tests.conftest import run_python


def _rehearse(out: Path, *flags: str, timeout: float = 600) -> tuple[dict, str]:
    result = run_python("-m", "model_build", "rehearse", "--out", str(out), *flags, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / REPORT_FILE).read_text()), result.stdout


def _check_report(report: dict, stdout: str) -> dict[str, dict]:
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert list(stages) == list(STAGES)
    for stage in stages.values():
        assert stage["ok"] and stage["wall_s"] > 0, stage
        assert stage["peak_rss_mib"] > 30, stage  # a Python interpreter's own, at the least
        assert f"\n{stage['name']:<10} {stage['wall_s']:>8.1f}" in stdout
    # Stages that hold the model peak above the one that only draws images.
    assert (
        min(stages[name]["peak_rss_mib"] for name in ("base", "finetune", "fuse", "serve"))
        > (stages["synth"]["peak_rss_mib"])
    )
    base = stages["base"]["details"]
    assert base["embedding_rows"] == math.ceil(base["tokenizer_entries"] / 64) * 64
    losses = stages["finetune"]["details"]["losses"]
    assert len(losses) == report["config"]["steps"] and all(math.isfinite(loss) for loss in losses)
    fuse = stages["fuse"]["details"]
    assert fuse["parity"]["passed"] and fuse["parity"]["images"] == report["config"]["parity_images"]
    assert fuse["parity"]["min_caption_agreement"] == 0.0 and "random weights" in fuse["gate"]
    serve = stages["serve"]["details"]
    assert serve["status"] == 200 and serve["caption_chars"] == len(serve["caption"])
    decode = stages["decode"]["details"]
    assert decode["timings_ms"]["detect"] > 0 and decode["caption_chars"] > 0  # pinned: it had to write something
    figures = report["figures"]
    assert figures["passed"] and figures["artifact_mib"] == round(fuse["artifact_bytes"] / 2**20, 1)
    assert figures["analyze"]["status"] == 200
    assert f"artifact: {figures['artifact_mib']} MiB" in stdout and "/analyze: status 200" in stdout
    return {name: stage["details"] for name, stage in stages.items()}


def test_rehearse_at_reduced_size_runs_every_stage_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "rehearsal"
    report, stdout = _rehearse(out, "--no-full-size", "--threads", "1")
    details = _check_report(report, stdout)
    assert details["base"]["full_size"] is False
    assert not any((out / name).exists() for name in ("base", "data", "finetune", "artifact"))  # no --keep


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RUN_REHEARSAL") != "1", reason="full size: ~1 min, 3 GiB; set RUN_REHEARSAL=1")
def test_rehearse_at_full_size(tmp_path: Path) -> None:
    out = tmp_path / "rehearsal"
    report, stdout = _rehearse(out, "--keep", timeout=3600)
    details = _check_report(report, stdout)
    base = details["base"]
    assert (base["tokenizer_entries"], base["embedding_rows"]) == (BASE_VOCAB, NATIVE_EMBEDDING_ROWS)
    assert 231_000_000 < base["parameters"] < 232_000_000
    assert 200 < report["figures"]["model_pt_mib"] < 300  # int8 Florence-2-base
    assert (out / "artifact" / "manifest.json").is_file()  # --keep
