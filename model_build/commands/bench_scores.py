"""What scores cost: the served decode with and without box/caption score computation (base size; --quick: tiny)."""

from __future__ import annotations

import argparse
import json

from model_build.bench.scores import ScoresBenchConfig
from model_build.commands.options import add_config_arguments, config_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ScoresBenchConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.bench.scores import bench_scores

    print(json.dumps(bench_scores(config_from(args, ScoresBenchConfig())), indent=2))
    return 0
