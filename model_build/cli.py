"""`python -m model_build <command>`: a thin layer over the Python API, one module per command.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`. A wrong invocation ends
with one line naming the problem, never a traceback: bad flags are argparse's usage errors (exit 2,
most of them caught by the config dataclass's `setting(minimum=..., check=...)` before any work), and
so is bad data (`DataError`: a missing annotation file, JSON that does not parse); inputs found wrong
once the work starts (a base that will not load, a corrupt artifact, a file gone) and a training run
that diverged exit 1; `fuse`'s parity gate and `quality`'s rule exit 3; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from handler.florence.artifact import ArtifactError
from model_build.base.loading import BaseModelError
from model_build.settings import UsageError

INTERRUPTED_EXIT = 130
"""Exit status after Ctrl-C, as shells report SIGINT."""
INPUT_ERRORS = (BaseModelError, ArtifactError, OSError)
"""Raised once the work has started, by inputs the flags could not vet up front; each names what is wrong."""

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
        command.set_defaults(run=module.run, command_parser=command)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)  # imports every command's config: seconds Ctrl-C may land in
    except KeyboardInterrupt:
        print("python -m model_build: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    command_parser: argparse.ArgumentParser = args.command_parser
    from model_build.data.coco import DataError
    from model_build.training import TrainingDiverged

    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        command_parser.error(_one_line(exc))  # exits 2 with the usage line, as a bad flag does
    except DataError as exc:  # bad input data is the user's to fix: one line naming the file, exit 2 like a bad flag
        print(f"{command_parser.prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (*INPUT_ERRORS, TrainingDiverged) as exc:
        print(f"{command_parser.prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command_parser.prog}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
