"""Train the embedded tiny Florence-2 from scratch on synthetic base captions and <OD>, saved in HF layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from model_build.pretrain import PretrainConfig
from model_build.training import TrainConfig

_DEFAULTS = PretrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=_DEFAULTS.data_dir, help="synthetic dataset (made if absent)")
    parser.add_argument("--out", type=Path, default=_DEFAULTS.out_dir, help="where the HF-layout model is written")
    parser.add_argument("--run-dir", type=Path, default=_DEFAULTS.run_dir, help="metrics, loss plot, checkpoint")
    parser.add_argument("--train-images", type=int, default=_DEFAULTS.train_images)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4, help="phase-2 peak learning rate (default: 5e-4)")
    parser.add_argument("--tasks", default="caption,detect", help="phase-2 tasks (default: caption,detect)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")


def run(args: argparse.Namespace) -> int:
    from model_build.pretrain import pretrain_tiny

    from handler.tasks import Task

    config = PretrainConfig(data_dir=args.data, out_dir=args.out, run_dir=args.run_dir,
                            train_images=args.train_images, seed=args.seed,
                            tasks=tuple(Task.from_name(name) for name in args.tasks.split(",")))
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               warmup_steps=50, log_every=10, checkpoint_every=50)
    out = pretrain_tiny(config, train_config, resume=args.resume)
    print(f"embedded tiny model written to {out}")
    return 0
