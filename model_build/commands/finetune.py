"""LoRA-fine-tune a Florence-2 base on COCO-format captions and/or boxes; writes a run folder with the adapter."""

from __future__ import annotations

import argparse
import json

from model_build.commands.options import add_config_arguments, config_from
from model_build.finetune.lora import FinetuneConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FinetuneConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.finetune.lora import ADAPTER_DIR, finetune

    config = config_from(args, FinetuneConfig())
    info = finetune(config)
    print(json.dumps({"adapter": str(config.run_dir / ADAPTER_DIR), "adapter_sha256": info.adapter_sha256}, indent=2))
    return 0
