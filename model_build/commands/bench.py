"""Benchmark the served fast runtime against the seed recipe (int8 + HF generate) side by side.

Full mode builds the Florence-2-base architecture (231.4M parameters, random weights) and writes
docs/benchmarks.{md,json,png}. `--quick` runs the same code paths on the tiny model in well under a
minute (CI smoke; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging

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
    summary = {name: round(row["speedup"], 2) for name, row in result["latency"].items()}
    print(
        json.dumps(
            {
                "parameters_m": result["parameters_m"],
                "speedup": summary,
                "cold_start_s": round(result["cold_start"]["served"]["first_caption_s"], 2),
                "artifact_mib": round(result["artifact_mib"]["served"], 1),
                "peak_rss_mib": round(result["cold_start"]["served"]["peak_rss_mib"]),
                "parity": result["parity"],
                "parity_same_int8_model": result["parity_same_int8_model"],
            },
            indent=2,
        )
    )
    if not config.quick:
        for name, bound, value, met in target_checks(result):
            log.info("target %-26s %-8s measured %8.2f  %s", name, bound, value, "met" if met else "NOT met")
    return 0
