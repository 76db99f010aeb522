"""The main job on the embedded default: synthetic data → LoRA fine-tune → fuse → local API → caption and boxes."""

from __future__ import annotations

import argparse

from model_build.commands.options import add_config_arguments, config_from
from model_build.demo import DemoConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DemoConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.demo import run_demo

    run_demo(config_from(args, DemoConfig()))
    return 0
