"""Lambda duration and dollars per 1,000 images at each memory size, from bench runs under its CPU share."""

from __future__ import annotations

import argparse

from model_build.bench.cost import CostConfig
from model_build.commands.options import add_config_arguments, config_from
from model_build.settings import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, CostConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.bench.cost import run_cost

    try:
        print(run_cost(config_from(args, CostConfig())), end="")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return 0
