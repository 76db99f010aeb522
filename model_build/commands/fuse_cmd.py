"""Merge a LoRA adapter into its base, quantize to int8, check parity with fp32 and write the served artifact."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model_build.commands.finetune_cmd import parse_tasks
from model_build.fuse import FuseConfig

_DEFAULTS = FuseConfig(out_dir=Path("artifacts/florence2"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", type=Path, default=None,
                        help="finetune run folder (or its adapter/); omit to fuse --base alone")
    parser.add_argument("--base", default=None, help="override the base recorded with the adapter")
    parser.add_argument("--out", type=Path, default=_DEFAULTS.out_dir, help="artifact folder (default: artifacts/florence2)")
    parser.add_argument("--image-size", type=int, default=None, help="serving size (default: the adapter's)")
    parser.add_argument("--tasks", type=parse_tasks, default=None, help="served tasks (default: caption,detect)")
    gate = parser.add_argument_group("parity gate (int8 vs fp32 merged model, on held-out images)")
    gate.add_argument("--data", type=Path, default=_DEFAULTS.data_dir, help="COCO-format root (default: data/synth)")
    gate.add_argument("--val-split", default=_DEFAULTS.val_split)
    gate.add_argument("--parity-images", type=int, default=_DEFAULTS.parity_images)
    gate.add_argument("--min-caption-agreement", type=float, default=_DEFAULTS.min_caption_agreement,
                      help="fraction of identical captions (default: 0.9)")
    gate.add_argument("--min-box-iou", type=float, default=_DEFAULTS.min_box_iou,
                      help="mean IoU of label-matched boxes, unmatched count as 0 (default: 0.8)")


def run(args: argparse.Namespace) -> int:
    from model_build.fuse import fuse
    from model_build.parity import ParityError

    config = FuseConfig(out_dir=args.out, adapter=args.adapter, base=args.base, image_size=args.image_size,
                        tasks=args.tasks, data_dir=args.data, val_split=args.val_split,
                        parity_images=args.parity_images, min_caption_agreement=args.min_caption_agreement,
                        min_box_iou=args.min_box_iou)
    try:
        manifest = fuse(config)
    except ParityError as exc:
        print(f"fuse: {exc}", file=sys.stderr)
        print(json.dumps({"parity": exc.report.as_dict()}, indent=2), file=sys.stderr)
        return 3
    print(json.dumps({"artifact": str(args.out), "model_bytes": manifest.model_bytes,
                      "model_sha256": manifest.model_sha256, "parity": manifest.parity}, indent=2))
    return 0
