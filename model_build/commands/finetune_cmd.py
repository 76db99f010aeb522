"""LoRA-fine-tune a Florence-2 base on COCO-format captions and/or boxes; writes a run folder with the adapter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from handler.tasks import IMAGE_SIZE, Task
from model_build.finetune import FinetuneConfig, LoraSettings

_LORA = LoraSettings()


def parse_tasks(text: str) -> list[Task]:
    """`caption,detect` (or task tokens) -> Task list; argparse turns the ValueError into a usage error."""
    try:
        return [Task.from_name(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--base", default="tiny", help="`tiny`, a native Florence-2 folder or a hub id (default: tiny)")
    data.add_argument("--data", type=Path, default=Path("data/synth"), help="COCO-format root (default: data/synth)")
    data.add_argument("--train-split", default="train2017", help="images folder / annotation suffix (default: train2017)")
    data.add_argument("--tasks", type=parse_tasks, default=[Task.CAPTION, Task.DETECT],
                      help="comma-separated: caption,detect (default: both, so detection is not forgotten)")
    data.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                      help=f"square training size = serving size (default: {IMAGE_SIZE})")
    data.add_argument("--max-images", type=int, default=None, help="use only the first N images per task")
    data.add_argument("--run-dir", type=Path, default=Path("runs/finetune"),
                      help="metrics, loss plot, checkpoint and adapter/ (default: runs/finetune)")

    lora = parser.add_argument_group("LoRA (defaults: the seed's settings, see docs/build.md)")
    lora.add_argument("--lora-r", type=int, default=_LORA.r)
    lora.add_argument("--lora-alpha", type=int, default=_LORA.alpha)
    lora.add_argument("--lora-dropout", type=float, default=_LORA.dropout)
    lora.add_argument("--target-modules", default=",".join(_LORA.target_modules),
                      help="comma-separated module names (default: q_proj,v_proj = language-model attention)")

    train = parser.add_argument_group("optimisation")
    train.add_argument("--steps", type=int, default=1500, help="optimizer steps (default: 1500)")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (default: 1e-2, tuned for the tiny base)")
    train.add_argument("--warmup-steps", type=int, default=10)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")


def run(args: argparse.Namespace) -> int:
    from model_build.finetune import finetune
    from model_build.training import TrainConfig

    config = FinetuneConfig(data_dir=args.data, run_dir=args.run_dir, base=args.base, train_split=args.train_split,
                            tasks=args.tasks, image_size=args.image_size, max_images=args.max_images)
    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                        target_modules=[m.strip() for m in args.target_modules.split(",") if m.strip()])
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                               warmup_steps=args.warmup_steps, seed=args.seed, log_every=args.log_every,
                               checkpoint_every=args.checkpoint_every)
    info = finetune(config, lora, train_config, resume=args.resume)
    print(json.dumps({"adapter": str(args.run_dir / "adapter"), "adapter_sha256": info.adapter_sha256}, indent=2))
    return 0
