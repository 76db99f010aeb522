"""Write a deterministic synthetic COCO 2017-layout dataset (shapes, two caption styles, boxes)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("data/synth"), help="dataset folder (default: data/synth)")
    parser.add_argument("--train", type=int, default=1000, help="train2017 images (default: 1000)")
    parser.add_argument("--val", type=int, default=100, help="val2017 images (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")


def run(args: argparse.Namespace) -> int:
    from model_build.synth import synthesize

    root = synthesize(args.out, train=args.train, val=args.val, seed=args.seed)
    print(f"wrote {args.train} train and {args.val} val images to {root}")
    return 0
