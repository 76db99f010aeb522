"""The main job on the embedded default: synthetic data → LoRA fine-tune → fuse → local API → caption and boxes."""

from __future__ import annotations

import argparse
from pathlib import Path

from model_build.demo import DemoConfig

_DEFAULTS = DemoConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=_DEFAULTS.base, help="base model (default: tiny, the embedded one)")
    parser.add_argument("--data", type=Path, default=_DEFAULTS.data_dir, help="COCO-format data (synthesized if absent)")
    parser.add_argument("--run-dir", type=Path, default=_DEFAULTS.run_dir, help="fine-tune run and demo outputs")
    parser.add_argument("--out", type=Path, default=_DEFAULTS.artifact_dir, help="artifact folder (default: artifacts/demo)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: finetune's default)")
    parser.add_argument("--serve", action="store_true", help="keep the API running after the sample request")


def run(args: argparse.Namespace) -> int:
    from model_build.demo import run_demo

    run_demo(DemoConfig(data_dir=args.data, run_dir=args.run_dir, artifact_dir=args.out, base=args.base,
                        steps=args.steps, serve=args.serve))
    return 0
