"""Merge a LoRA adapter into its base, quantize to int8, check parity with fp32 and write the served artifact."""

from __future__ import annotations

import argparse
import json
import sys

from model_build.commands.options import add_config_arguments, config_from
from model_build.export.fuse import FuseConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FuseConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.export.fuse import fuse
    from model_build.export.parity import ParityError

    config = config_from(args, FuseConfig())
    try:
        manifest = fuse(config)
    except ParityError as exc:
        print(f"fuse: {exc}", file=sys.stderr)
        print(json.dumps({"parity": exc.report.as_dict()}, indent=2), file=sys.stderr)
        return 3
    summary = {
        "artifact": str(config.out_dir),
        "model_bytes": manifest.model_bytes,
        "model_sha256": manifest.model_sha256,
        "parity": manifest.parity,
    }
    print(json.dumps(summary, indent=2))
    return 0
