"""`python -m model_build cost`: GB-second arithmetic and the table it builds from bench JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from model_build.bench import cost
from model_build.cli import main
from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "docs" / "benchmarks.json"


def test_dollars_are_gb_seconds_plus_requests_billed_per_started_ms() -> None:
    # 1 GB for 1 s = 1 GB-s: $0.0000166667 (x86_64) + $0.0000002 per request, times 1,000.
    assert cost.dollars_per_1000(1024, 1.0, "x86_64") == pytest.approx(0.0168667)
    assert cost.dollars_per_1000(2048, 0.5, "arm64") == pytest.approx(1000 * (0.0000133334 + 0.0000002))
    assert cost.dollars_per_1000(1024, 0.0001, "x86_64") == cost.dollars_per_1000(1024, 0.001, "x86_64")
    assert cost.cpu_share(1769) == 1.0 and cost.cpu_share(3008) == pytest.approx(1.70, abs=0.01)


def test_table_from_bench_runs_names_cheapest_and_fastest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    measured = json.loads(BENCH.read_text())
    slower = copy.deepcopy(measured)
    for case in cost.latency_cases(slower).values():
        case["served"]["median_s"] *= 1.5
    slower["threads"] = 1
    (tmp_path / "one.json").write_text(json.dumps(slower))
    out = tmp_path / "table.md"
    assert main(["cost", "--measured", f"1769={tmp_path / 'one.json'},3008={BENCH}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    analyze = cost.latency_cases(measured)["caption+detect"]["served"]["median_s"]
    fast = cost.dollars_per_1000(3008, analyze, "x86_64")
    cheap = cost.dollars_per_1000(1769, 1.5 * analyze, "x86_64")
    rows = [line for line in printed.splitlines() if line.startswith("| 1769") or line.startswith("| 3008")]
    assert rows[0].startswith(f"| 1769 MB | 1.00 | 1 | {1.5 * analyze:.3f} |")
    assert f"${fast:.4f}" in rows[1] and f"{analyze:.3f}" in rows[1]
    winner = "Cheapest per image: 1769 MB" if cheap < fast else "Cheapest per image: 3008 MB"
    assert winner in printed and "Fastest: 3008 MB" in printed
    assert "arm64 was not measured" in printed


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_pairs_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert "expected MEMORY_MB=path" in _usage_error(["cost", "--measured", "lots-of-memory"], capsys)
    assert "required: --measured" in _usage_error(["cost"], capsys)


def test_estimates_between_one_and_two_cpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two = json.loads(BENCH.read_text())
    two["threads"] = 2
    one = copy.deepcopy(two)
    one["threads"] = 1
    for case in cost.latency_cases(one).values():
        case["served"]["median_s"] *= 1.4
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "two.json").write_text(json.dumps(two))
    measured = f"1769={tmp_path / 'one.json'},4096={tmp_path / 'two.json'}"
    assert main(["cost", "--measured", measured, "--estimate", "2048,3008"]) == 0
    rows = {
        line.split(" |")[0]: line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and " MB" in line
    }
    t1 = cost.latency_cases(one)["caption+detect"]["served"]["median_s"]
    t2 = cost.latency_cases(two)["caption+detect"]["served"]["median_s"]
    assert list(rows) == ["| 1769 MB", "| 2048 MB (est.)", "| 3008 MB (est.)", "| 4096 MB"]
    # 1.16 CPUs: one thread, as fast as on one whole CPU; 1.70 CPUs: two threads, paying 2 x t2 CPU-seconds.
    assert rows["| 2048 MB (est.)"].startswith(f"| 2048 MB (est.) | 1.16 | 1 | {t1:.3f} |")
    assert rows["| 3008 MB (est.)"].startswith(f"| 3008 MB (est.) | 1.70 | 2 | {2 * t2 / (3008 / 1769):.3f} |")
    capsys.readouterr()
    argv = ["cost", "--measured", f"4096={tmp_path / 'two.json'}", "--estimate", "2048"]
    assert "1-thread run and a measured 2-thread" in _usage_error(argv, capsys)
