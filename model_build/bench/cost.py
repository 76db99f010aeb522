"""Lambda cost per 1,000 images from measured bench durations: the table in docs/deploy.md.

Lambda bills memory x duration (GB-seconds) plus a fee per request, and grants CPU in proportion to
memory: one vCPU's worth at 1,769 MB, and a second vCPU above that (up to six at 10,240 MB). A 2,048 MB
function sees two vCPUs but may only use 2048/1769 = 1.16 of them, so its speed is neither the 1-thread
nor the 2-thread figure. Each memory size is therefore paired with a bench run made under that size's
CPU share (`python -m model_build bench --threads N` inside a CFS quota of memory/1769 CPUs, see
docs/deploy.md), and this turns those runs into duration and dollars, so the table can be regenerated:

    python -m model_build cost --measured 1769=t1/benchmarks.json,2048=q2048/benchmarks.json,...

Durations are the served runtime's medians ("caption+detect" is what `/analyze` and an S3 upload run,
"caption" is `/caption`); image decode, S3 reads and writes and the response add a few tens of ms.
arm64 durations are not measured here: the table prices arm64 at the x86_64 duration, as labelled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_build.settings import setting

PRICE_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
"""US East (N. Virginia) public on-demand prices, first pricing tier."""
PRICE_PER_REQUEST = 0.20 / 1_000_000
MB_PER_VCPU = 1769
"""Lambda grants one vCPU's worth of CPU time per 1,769 MB."""
CASES = {"analyze": "caption+detect", "caption": "caption"}
"""Table column -> the bench's latency case."""


@dataclass
class CostConfig:
    """`python -m model_build cost`: which bench run measured which memory size, and where the table goes."""

    measured: list[str] = setting(
        factory=list,
        help="MEMORY_MB=path/to/benchmarks.json pairs, comma-separated: a bench run under that size's CPU share",
    )
    out: Path | None = setting(None, help="also write the markdown table to this file")


def cpu_share(memory_mb: int) -> float:
    """CPUs' worth of time a function of this size may use (6 at Lambda's 10,240 MB maximum)."""
    return memory_mb / MB_PER_VCPU


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


def row_from_bench(memory_mb: int, bench: dict[str, Any], source: str) -> Row:
    seconds = {column: bench["latency"][case]["served"]["median_s"] for column, case in CASES.items()}
    return Row(memory_mb, int(bench["threads"]), seconds, source)


def rows_from(measured: dict[int, Path]) -> list[Row]:
    return [row_from_bench(m, json.loads(measured[m].read_text()), str(measured[m])) for m in sorted(measured)]


def markdown(rows: list[Row]) -> str:
    """The table, and which setting is cheapest and which fastest for /analyze."""
    lines = [
        "| memory | CPU share | torch threads | /analyze s | caption s "
        "| /analyze $/1k x86_64 | /analyze $/1k arm64* | caption $/1k x86_64 | caption $/1k arm64* |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.memory_mb} MB | {cpu_share(row.memory_mb):.2f} | {row.threads} "
            f"| {row.seconds['analyze']:.3f} | {row.seconds['caption']:.3f} "
            f"| ${row.dollars('analyze', 'x86_64'):.4f} | ${row.dollars('analyze', 'arm64'):.4f} "
            f"| ${row.dollars('caption', 'x86_64'):.4f} | ${row.dollars('caption', 'arm64'):.4f} |"
        )
    cheapest = min(rows, key=lambda r: r.dollars("analyze", "x86_64"))
    fastest = min(rows, key=lambda r: r.seconds["analyze"])
    lines += [
        "",
        "\\* arm64 priced at the x86_64 duration: arm64 was not measured here.",
        f"Cheapest per image: {cheapest.memory_mb} MB (${cheapest.dollars('analyze', 'x86_64'):.4f} per 1,000 "
        f"/analyze on x86_64). Fastest: {fastest.memory_mb} MB ({fastest.seconds['analyze']:.3f} s per /analyze, "
        f"${fastest.dollars('analyze', 'x86_64'):.4f} per 1,000).",
    ]
    return "\n".join(lines) + "\n"


def run_cost(config: CostConfig) -> str:
    table = markdown(rows_from(parse_measured(config.measured)))
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(table)
    return table
