"""LoRA-fine-tune a Florence-2 base on COCO-format captions and/or boxes; writes a run folder with the adapter."""

from __future__ import annotations

import argparse
import json

from model_build.commands.options import add_config_arguments, config_from
from model_build.finetune.lora import FinetuneConfig
from model_build.settings import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FinetuneConfig())


def run(args: argparse.Namespace) -> int:
    from peft.utils.error import NoMatchingPeftModuleError

    from model_build.finetune.lora import ADAPTER_DIR, finetune

    config = config_from(args, FinetuneConfig())
    try:
        info = finetune(config)
    except NoMatchingPeftModuleError as exc:  # only the loaded base knows its module names
        raise UsageError(f"--target-modules: {exc}") from exc
    print(json.dumps({"adapter": str(config.run_dir / ADAPTER_DIR), "adapter_sha256": info.adapter_sha256}, indent=2))
    return 0
