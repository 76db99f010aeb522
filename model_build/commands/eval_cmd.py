"""Score an artifact, a finetune run or a base on a COCO-format split: CIDEr, BLEU-4, exact match, COCO mAP."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from handler.tasks import Task
from model_build.commands.finetune_cmd import parse_tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, nargs="?", default=None,
                        help="artifact folder (has manifest.json) or finetune run/adapter folder; omit with --base")
    parser.add_argument("--base", default=None, help="score this base alone, or override an adapter's base")
    parser.add_argument("--data", type=Path, default=Path("data/synth"), help="COCO-format root (default: data/synth)")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--tasks", type=parse_tasks, default=[Task.CAPTION, Task.DETECT])
    parser.add_argument("--caption-style", default="", choices=["", "base"],
                        help="references: '' = captions_{split}.json (COCO), 'base' = captions_base_{split}.json")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=None, help="for --base/adapter (default: 384/adapter's)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")


def run(args: argparse.Namespace) -> int:
    from model_build.evaluate import EvalConfig, evaluate, load_model

    if args.model is None and args.base is None:
        raise SystemExit("eval: give a model folder or --base")
    model, processor, source = load_model(args.model, base=args.base, image_size=args.image_size)
    config = EvalConfig(data_dir=args.data, split=args.split, tasks=tuple(args.tasks), caption_style=args.caption_style,
                        max_images=args.max_images, batch_size=args.batch_size)
    report = {"model": source, **evaluate(model, processor, config)}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0
