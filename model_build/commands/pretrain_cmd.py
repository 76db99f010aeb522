"""Train the embedded tiny Florence-2 from scratch on synthetic base captions and <OD>, saved in HF layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_build.pretrain import PRETRAIN_BATCH, PRETRAIN_LR, PRETRAIN_STEPS, PretrainConfig

_DEFAULTS = PretrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="where the HF-layout model is written (default: the embedded model folder)")
    parser.add_argument("--run-dir", type=Path, default=_DEFAULTS.run_dir,
                        help=f"metrics, loss plot, checkpoint, eval.json (default: {_DEFAULTS.run_dir})")
    parser.add_argument("--val-dir", type=Path, default=_DEFAULTS.val_dir,
                        help=f"held-out val2017 split, written and scored after training (default: {_DEFAULTS.val_dir})")
    parser.add_argument("--full-scenes", type=int, default=_DEFAULTS.full_scenes,
                        help=f"scenes of one or two shapes (default: {_DEFAULTS.full_scenes})")
    parser.add_argument("--easy-scenes", type=int, default=_DEFAULTS.easy_scenes,
                        help=f"scenes of one large shape (default: {_DEFAULTS.easy_scenes})")
    parser.add_argument("--dense-weight", type=float, default=_DEFAULTS.dense_weight,
                        help=f"per-cell grid loss weight, 0 = off (default: {_DEFAULTS.dense_weight})")
    parser.add_argument("--steps", type=int, default=PRETRAIN_STEPS, help=f"default: {PRETRAIN_STEPS}")
    parser.add_argument("--batch-size", type=int, default=PRETRAIN_BATCH, help=f"default: {PRETRAIN_BATCH}")
    parser.add_argument("--lr", type=float, default=PRETRAIN_LR, help=f"peak learning rate (default: {PRETRAIN_LR})")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--workers", type=int, default=_DEFAULTS.workers, help="processes drawing the scenes")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")


def run(args: argparse.Namespace) -> int:
    from model_build.pretrain import pretrain_tiny
    from model_build.training import TrainConfig

    config = PretrainConfig(out_dir=args.out, run_dir=args.run_dir, val_dir=args.val_dir,
                            full_scenes=args.full_scenes, easy_scenes=args.easy_scenes,
                            dense_weight=args.dense_weight, seed=args.seed, workers=args.workers)
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               warmup_steps=50, log_every=10, checkpoint_every=100)
    out = pretrain_tiny(config, train_config, resume=args.resume)
    print(f"embedded tiny model written to {out}")
    print((out / "PROVENANCE.json").read_text())
    return 0
