"""Write a deterministic synthetic COCO 2017-layout dataset (shapes, two caption styles, boxes)."""

from __future__ import annotations

import argparse

from model_build.commands.options import add_config_arguments, config_from
from model_build.data.synth import SynthConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, SynthConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.data.synth import synthesize

    config = config_from(args, SynthConfig())
    root = synthesize(config.out_dir, train=config.train, val=config.val, seed=config.seed)
    print(f"wrote {config.train} train and {config.val} val images to {root}")
    return 0
