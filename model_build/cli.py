"""`python -m model_build <command>`: a thin layer over the Python API, one module per command.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("model_build.commands.synth", "write a synthetic COCO-format dataset"),
    "pretrain-tiny": ("model_build.commands.pretrain", "train the embedded tiny Florence-2 from scratch"),
    "finetune": ("model_build.commands.finetune", "LoRA-fine-tune Florence-2 on COCO-format data"),
    "fuse": ("model_build.commands.fuse", "merge, quantize, parity-check and write the served artifact"),
    "quality": (
        "model_build.commands.quality",
        "quality parity: served vs seed recipe vs fp32 (tiny held-out split, base size teacher-forced)",
    ),
    "eval": ("model_build.commands.eval", "CIDEr/BLEU-4/exact match and COCO mAP for a model on a split"),
    "bench": ("model_build.commands.bench", "benchmark the served runtime against the seed recipe"),
    "cost": ("model_build.commands.cost", "Lambda duration and dollars per 1,000 images from bench runs"),
    "bench-scores": ("model_build.commands.bench_scores", "decode time with and without box/caption scores"),
    "rehearse": (
        "model_build.commands.rehearse",
        "full-size rehearsal: random Florence-2-base in the native layout, finetune, fuse, one /analyze",
    ),
    "demo": (
        "model_build.commands.demo",
        "the main job: synth, finetune, fuse, then caption and detect via the local API",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_build", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from model_build.data.coco import DataError

    try:
        return int(args.run(args) or 0)
    except DataError as exc:  # bad input data is the user's to fix: one line naming the file, no traceback
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
