"""Benchmark the served fast runtime against the seed recipe (int8 + HF generate) side by side.

Full mode builds the Florence-2-base architecture (231.4M parameters, random weights) and writes
docs/benchmarks.{md,json,png}. `--quick` runs the same code paths on the tiny model in well under a
minute (CI smoke; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny model, few runs: a smoke test for CI")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per figure (default 9, quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: CPUs available to this process)")
    parser.add_argument("--caption-tokens", type=int, default=20)
    parser.add_argument("--detect-tokens", type=int, default=60)
    parser.add_argument("--cold-runs", type=int, default=None, help="fresh-process cold starts (best is kept)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write a stage breakdown and torch.profiler op tables to this text file")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for benchmarks.{md,json,png} (default docs/, or no files with --quick)")


def run(args: argparse.Namespace) -> int:
    from model_build.bench import run_bench
    from model_build.bench_report import target_checks, write_report

    runs = args.runs or (2 if args.quick else 9)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    cold_runs = args.cold_runs or (1 if args.quick else 3)
    result = run_bench(quick=args.quick, runs=runs, warmup=warmup, threads=args.threads,
                       caption_tokens=args.caption_tokens, detect_tokens=args.detect_tokens, cold_runs=cold_runs,
                       profile_path=args.profile)
    out = args.out if args.out is not None else (None if args.quick else Path("docs"))
    if out is not None:
        for path in write_report(result, out):
            log.info("wrote %s", path)
    summary = {name: round(row["speedup"], 2) for name, row in result["latency"].items()}
    print(json.dumps({"parameters_m": result["parameters_m"], "speedup": summary,
                      "cold_start_s": round(result["cold_start"]["served"]["first_caption_s"], 2),
                      "artifact_mib": round(result["artifact_mib"]["served"], 1),
                      "peak_rss_mib": round(result["cold_start"]["served"]["peak_rss_mib"]),
                      "parity": result["parity"],
                      "parity_same_int8_model": result["parity_same_int8_model"]}, indent=2))
    if not args.quick:
        for name, bound, value, met in target_checks(result):
            log.info("target %-26s %-8s measured %8.2f  %s", name, bound, value, "met" if met else "NOT met")
    return 0
