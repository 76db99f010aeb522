"""Fusing: base + LoRA adapter -> merged fp32 -> int8 -> parity gate -> the served artifact folder.

The gate runs before anything is written: an int8 model that disagrees with its fp32 source leaves
no artifact behind (and an older artifact at `--out` is left untouched), so a deploy can never pick
up a model that failed it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handler.florence.artifact import Manifest
from handler.florence.engine import Engine
from handler.florence.tasks import Task
from model_build.base.loading import check_base, check_image_size
from model_build.export.parity import BASELINE_SLACK, ParityError, ParityReport, compare
from model_build.export.writer import check_artifact_out
from model_build.finetune.lora import check_adapter
from model_build.settings import UsageError, setting


@dataclass
class FuseConfig:
    """`python -m model_build fuse`: every default of building the served artifact, in one place."""

    out_dir: Path = setting(
        Path("artifacts/florence2"),
        help="artifact folder: new, empty or an earlier artifact, replaced once the new one is complete",
        flag="--out",
        check=check_artifact_out,
    )
    adapter: Path | None = setting(
        None, help="finetune run folder (or its adapter/); omit to fuse --base alone", check=check_adapter
    )
    base: str | None = setting(
        None, help="override the base recorded with the adapter; required without one", check=check_base
    )
    image_size: int | None = setting(None, help="serving size (default: the adapter's)", check=check_image_size)
    tasks: list[Task] | None = setting(None, help="served tasks (default: caption,detect)")
    data_dir: Path = setting(Path("data/synth"), help="COCO-format root of the parity gate's images", flag="--data")
    val_split: str = setting("val2017", help="held-out split the parity gate reads")
    parity_images: int = setting(20, help="held-out images the parity gate compares on", minimum=1)
    min_caption_agreement: float = setting(
        0.9, help="parity gate: fraction of identical captions, int8 vs fp32", minimum=0
    )
    min_box_iou: float = setting(
        0.8, help="parity gate: mean IoU of label-matched boxes (unmatched count as 0)", minimum=0
    )
    baseline_slack: float = setting(
        BASELINE_SLACK,
        help="below a bound, still pass if as faithful to fp32 as the seed recipe less this (negative: bounds only)",
    )


def held_out_images(data_dir: str | Path, split: str, count: int) -> list:
    """The first `count` images of a COCO split, by image id, as RGB PIL images."""
    from model_build.data.coco import open_rgb
    from model_build.evaluate import split_records

    return [open_rgb(record.path) for record in split_records(Path(data_dir), split, count)]


@dataclass
class MergedModel:
    """The fp32 model fuse starts from: the base with the adapter merged in, and what the manifest records."""

    model: Any
    processor: Any
    """At the serving size (the adapter's, unless overridden)."""
    base_id: str
    adapter_sha256: str | None = None
    lora: dict[str, Any] = field(default_factory=dict)


def merged_model(config: FuseConfig) -> MergedModel:
    """The base (or base + adapter, merged) in fp32, ready to quantize."""
    from handler.florence.tasks import IMAGE_SIZE
    from model_build.base.loading import load_base

    if config.adapter is None:
        assert config.base is not None  # fuse() says so first
        model, processor = load_base(config.base, config.image_size or IMAGE_SIZE)
        return MergedModel(model.eval(), processor, config.base)
    from model_build.finetune.lora import load_adapter

    peft_model, processor, info = load_adapter(config.adapter, base=config.base, image_size=config.image_size)
    merged = peft_model.merge_and_unload().eval()
    return MergedModel(merged, processor, config.base or info.base, info.adapter_sha256, info.lora)


def fuse(config: FuseConfig) -> Manifest:
    """Build, gate and write the artifact; raise ParityError (writing nothing) when int8 drifts too far."""
    from model_build.base.loading import set_image_size
    from model_build.export.serving_prep import prepare_for_serving
    from model_build.export.writer import write_artifact

    if config.adapter is None and config.base is None:
        raise UsageError("give --adapter (a finetune run folder) or --base")
    started = time.perf_counter()
    images = held_out_images(config.data_dir, config.val_split, config.parity_images)  # bad data stops before loading
    merged = merged_model(config)
    model, processor = merged.model, merged.processor
    image_size = int(processor.image_processor.size["height"])
    set_image_size(processor, image_size)
    tasks = config.tasks or [Task.CAPTION, Task.DETECT]
    # The int8 weights of the plain recipe, re-wired into the lean runtime the handler serves.
    quantized = prepare_for_serving(model, processor)

    report: ParityReport = compare(
        Engine(model, processor),
        Engine(quantized, processor),
        images,
        tasks,
        config.min_caption_agreement,
        config.min_box_iou,
    )
    report.baseline_slack = config.baseline_slack
    if not report.passed and config.baseline_slack >= 0:
        from model_build.export.quantize import quantize_for_serving

        baseline = compare(
            Engine(model, processor),
            Engine(quantize_for_serving(model), processor),
            images,
            tasks,
            config.min_caption_agreement,
            config.min_box_iou,
        )
        report.baseline_caption_agreement, report.baseline_box_iou = baseline.caption_agreement, baseline.box_iou
    if not report.passed:
        raise ParityError(
            f"parity gate failed on {report.images} held-out images: {'; '.join(report.failures)}. "
            f"No artifact written to {config.out_dir}. Examples: {report.caption_mismatches[:2]}",
            report,
        )
    return write_artifact(
        quantized,
        processor,
        config.out_dir,
        base_id=merged.base_id,
        image_size=image_size,
        tasks=tasks,
        adapter_sha256=merged.adapter_sha256,
        parity={**report.as_dict(), "data": f"{config.data_dir}/{config.val_split}"},
        extra={
            "lora": merged.lora,
            "quantization": "int8 dynamic, every nn.Linear",
            "runtime": quantized.runtime,
            "fuse_seconds": round(time.perf_counter() - started, 1),
        },
    )
