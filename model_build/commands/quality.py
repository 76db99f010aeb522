"""Quality parity: fp32 vs the seed recipe vs the served runtime (tiny model's held-out split; base size teacher-forced)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from model_build.bench.quality import QualityConfig
from model_build.commands.options import add_config_arguments, config_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, QualityConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.bench.quality import check_quality

    report = check_quality(config_from(args, QualityConfig()))
    print(json.dumps({**asdict(report), "passed": report.passed}, indent=2))
    return 0 if report.passed else 3
