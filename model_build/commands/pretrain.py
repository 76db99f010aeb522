"""Train the embedded tiny Florence-2 from scratch on synthetic base captions and <OD>, saved in HF layout."""

from __future__ import annotations

import argparse

from model_build.commands.options import add_config_arguments, config_from
from model_build.pretrain.pretraining import PROVENANCE_FILE, PretrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PretrainConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.pretrain.pretraining import pretrain_tiny

    out = pretrain_tiny(config_from(args, PretrainConfig()))
    print(f"embedded tiny model written to {out}")
    print((out / PROVENANCE_FILE).read_text())
    return 0
