"""Score an artifact, a finetune run or a base on a COCO-format split: CIDEr, BLEU-4, exact match, COCO mAP."""

from __future__ import annotations

import argparse
import json

from model_build.commands.options import add_config_arguments, config_from
from model_build.evaluate import EvalConfig
from model_build.settings import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EvalConfig())


def run(args: argparse.Namespace) -> int:
    from model_build.evaluate import evaluate, is_artifact_folder, load_model, read_eval_data

    config = config_from(args, EvalConfig())
    if config.model is None and config.base is None:
        raise UsageError("give a model folder (an artifact or a finetune run) or --base")
    if config.model is not None and is_artifact_folder(config.model) and (config.base or config.image_size):
        raise UsageError("--base and --image-size apply to a base or an adapter; an artifact carries its own")
    data = read_eval_data(config)  # bad data stops before loading, not after predicting the whole split
    model, processor, source = load_model(config.model, base=config.base, image_size=config.image_size)
    report = {"model": source, **evaluate(model, processor, config, data=data)}
    text = json.dumps(report, indent=2)
    if config.out:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(text)
    print(text)
    return 0
