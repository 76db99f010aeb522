"""Benchmark the served fast runtime against the seed recipe (int8 + HF generate) side by side.

Full mode builds the Florence-2-base architecture (231.4M parameters, random weights) and writes
docs/benchmarks.{md,json,png}. `--quick` runs the same code paths on the tiny model in well under a
minute (CI smoke; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict

from model_build.bench.run import BenchConfig
from model_build.commands.options import add_config_arguments, config_from

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, BenchConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.bench.report import target_checks, write_report
    from model_build.bench.run import run_bench

    config = config_from(args, BenchConfig()).resolved()
    result = run_bench(config)
    if config.out is not None:
        for path in write_report(result, config.out):
            log.info("wrote %s", path)
    summary = {
        "parameters_m": result.parameters_m,
        "speedup": {row.name: round(row.speedup, 2) for row in result.latency},
        "cold_start_s": round(result.served_cold.first_caption_s, 2),
        "artifact_mib": round(result.served_artifact_mib, 1),
        "peak_rss_mib": round(result.served_cold.peak_rss_mib),
        "peers_ms": {p.name: [_ms(p.baseline_s), _ms(p.served_s), _ms(p.ort_s)] for p in result.peers},
        "per_token_ms": round(result.decode.per_token_ms, 2),
        "floor_ms": round(result.decode.floor.floor_ms, 2),
        "quality": [asdict(row) for row in result.fidelity.rows],
    }
    print(json.dumps(summary, indent=2))
    if not config.quick:
        for name, bound, value, met in target_checks(result):
            log.info("target %-26s %-8s measured %8.2f  %s", name, bound, value, "met" if met else "NOT met")
    return 0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
