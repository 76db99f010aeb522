"""Lambda cost per 1,000 images from measured bench durations: the table in docs/deploy.md.

Lambda bills memory x duration (GB-seconds) plus a fee per request, and grants CPU in proportion to
memory: one vCPU's worth at 1,769 MB, and a second vCPU above that (up to six at 10,240 MB). A 2,048 MB
function sees two vCPUs but may only use 2048/1769 = 1.16 of them, so its speed is neither the 1-thread
nor the 2-thread figure. Each memory size is paired with a bench run made with that size's threads
and CPU (`--measured`), or estimated from the 1- and 2-thread runs (`--estimate`, see `estimate`), and
this turns them into duration and dollars, so the table can be regenerated:

    python -m model_build cost --measured 1769=t1/benchmarks.json,4096=t2/benchmarks.json --estimate 2048,3008

Durations are the served runtime's medians ("caption+detect" is what `/analyze` and an S3 upload run,
"caption" is `/caption`); image decode, S3 reads and writes and the response add a few tens of ms.
arm64 durations are not measured here: the table prices arm64 at the x86_64 duration, as labelled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from handler.config import MB_PER_LAMBDA_CPU
from model_build.settings import output_file, setting

PRICE_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
"""US East (N. Virginia) public on-demand prices, first pricing tier."""
PRICE_PER_REQUEST = 0.20 / 1_000_000
CASES = {"analyze": "caption+detect", "caption": "caption"}
"""Table column -> the bench's latency case."""


@dataclass
class CostConfig:
    """`python -m model_build cost`: which bench run measured which memory size, and where the table goes."""

    measured: list[str] = setting(
        factory=list,
        help="MEMORY_MB=path/to/benchmarks.json pairs, comma-separated: a bench run under that size's CPU share",
        required=True,
    )
    estimate: list[str] = setting(
        factory=list,
        help="memory sizes (MB) to estimate from the measured 1-thread and 2-thread runs, comma-separated",
    )
    out: Path | None = setting(None, help="also write the markdown table to this file", check=output_file)


def cpu_share(memory_mb: int) -> float:
    """CPUs' worth of time a function of this size may use (6 at Lambda's 10,240 MB maximum)."""
    return memory_mb / MB_PER_LAMBDA_CPU


def dollars_per_1000(memory_mb: int, duration_s: float, architecture: str) -> float:
    """Compute plus request fees for 1,000 invocations of `duration_s` (billed per started ms)."""
    billed_s = math.ceil(duration_s * 1000) / 1000
    return 1000 * (memory_mb / 1024 * billed_s * PRICE_PER_GB_SECOND[architecture] + PRICE_PER_REQUEST)


@dataclass(frozen=True)
class Row:
    memory_mb: int
    threads: int
    seconds: dict[str, float]
    """Median served seconds per table column (analyze, caption)."""
    source: str
    estimated: bool = False

    def dollars(self, case: str, architecture: str) -> float:
        return dollars_per_1000(self.memory_mb, self.seconds[case], architecture)


def parse_measured(pairs: list[str]) -> dict[int, Path]:
    measured = {}
    for pair in pairs:
        memory, sep, path = pair.partition("=")
        if not sep or not memory.strip().isdigit():
            raise ValueError(f"expected MEMORY_MB=path/to/benchmarks.json, not {pair!r}")
        measured[int(memory)] = Path(path.strip())
    return measured


def latency_cases(bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The bench JSON's latency rows by name: a list of `LatencyRow`s now, a name-keyed map before typed results."""
    latency = bench["latency"]
    return {row["name"]: row for row in latency} if isinstance(latency, list) else latency


def row_from_bench(memory_mb: int, bench: dict[str, Any], source: str) -> Row:
    cases = latency_cases(bench)
    seconds = {column: cases[case]["served"]["median_s"] for column, case in CASES.items()}
    return Row(memory_mb, int(bench["threads"]), seconds, source)


def rows_from(measured: dict[int, Path]) -> list[Row]:
    rows = []
    for memory_mb in sorted(measured):
        path = measured[memory_mb]
        try:
            rows.append(row_from_bench(memory_mb, json.loads(path.read_text()), str(path)))
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, or JSON without a bench run's fields
            raise ValueError(f"{path} is not a bench run's benchmarks.json ({type(exc).__name__}: {exc})") from exc
    return rows


def estimate(memory_mb: int, one_thread: Row, two_threads: Row) -> Row:
    """A size between one and two CPUs' worth, from runs on one and on two whole CPUs.

    The handler runs round(memory/1769) threads there (`handler.config.default_torch_threads`). One
    thread on at least one CPU's worth runs as measured. Two threads cannot beat two whole CPUs, nor
    finish before the share has paid for their CPU time; that time is taken as 2 x the 2-thread
    duration, because torch's worker threads spin while they wait, so both stay busy.
    """
    share = cpu_share(memory_mb)
    if round(share) <= 1:
        return replace(one_thread, memory_mb=memory_mb, estimated=True)
    seconds = {case: max(s, 2 * s / min(share, 2.0)) for case, s in two_threads.seconds.items()}
    return Row(memory_mb, 2, seconds, two_threads.source, estimated=True)


def with_estimates(rows: list[Row], sizes: list[int]) -> list[Row]:
    by_threads = {row.threads: row for row in rows}
    if sizes and not {1, 2} <= set(by_threads):
        raise ValueError("--estimate needs a measured 1-thread run and a measured 2-thread run")
    estimated = [estimate(m, by_threads[1], by_threads[2]) for m in sizes]
    return sorted(rows + estimated, key=lambda row: row.memory_mb)


def markdown(rows: list[Row]) -> str:
    """The table, and which setting is cheapest and which fastest for /analyze."""
    lines = [
        "| memory | CPU share | torch threads | /analyze s | caption s "
        "| /analyze $/1k x86_64 | /analyze $/1k arm64* | caption $/1k x86_64 | caption $/1k arm64* |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.memory_mb} MB{' (est.)' if row.estimated else ''} | {cpu_share(row.memory_mb):.2f} | {row.threads} "
            f"| {row.seconds['analyze']:.3f} | {row.seconds['caption']:.3f} "
            f"| ${row.dollars('analyze', 'x86_64'):.4f} | ${row.dollars('analyze', 'arm64'):.4f} "
            f"| ${row.dollars('caption', 'x86_64'):.4f} | ${row.dollars('caption', 'arm64'):.4f} |"
        )
    cheapest = min(rows, key=lambda r: r.dollars("analyze", "x86_64"))
    fastest = min(rows, key=lambda r: r.seconds["analyze"])
    lines += [
        "",
        "\\* arm64 priced at the x86_64 duration: arm64 was not measured here.",
        *(
            ["(est.): estimated from the 1- and 2-thread runs, not measured at that CPU share (see estimate())."]
            if any(row.estimated for row in rows)
            else []
        ),
        f"Cheapest per image: {cheapest.memory_mb} MB (${cheapest.dollars('analyze', 'x86_64'):.4f} per 1,000 "
        f"/analyze on x86_64). Fastest: {fastest.memory_mb} MB ({fastest.seconds['analyze']:.3f} s per /analyze, "
        f"${fastest.dollars('analyze', 'x86_64'):.4f} per 1,000).",
    ]
    return "\n".join(lines) + "\n"


def run_cost(config: CostConfig) -> str:
    sizes = [int(size) for size in config.estimate if size.strip().isdigit()]
    if len(sizes) != len(config.estimate):
        raise ValueError(f"--estimate takes memory sizes in MB, not {config.estimate}")
    table = markdown(with_estimates(rows_from(parse_measured(config.measured)), sizes))
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(table)
    return table
