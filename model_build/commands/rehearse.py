"""The full-size rehearsal: a random-weight Florence-2-base in the native layout, then finetune, fuse and one
/analyze through the handler, each stage timed (wall, peak RSS); prints a table and writes report.json."""

from __future__ import annotations

import argparse

from model_build.commands.options import add_config_arguments, config_from
from model_build.rehearsal.pipeline import RehearsalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, RehearsalConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.rehearsal.pipeline import rehearse

    report = rehearse(config_from(args, RehearsalConfig()))
    return 0 if report["figures"]["passed"] else 1
