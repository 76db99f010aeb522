"""`python -m model_build quality`: the quality-parity rule of `model_build.export.quality`, measured end to end.

Needs the bench's model builders (the embedded tiny model, the random Florence-2-base), so it lives
beside the bench rather than in the export stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from handler.florence.tasks import Task
from model_build.data.synth import check_data_or_synth_out
from model_build.export.quality import BASE_FIDELITY_IMAGES, QualityReport, split_quality, teacher_forced_fidelity
from model_build.settings import SEED_BOUNDS, setting


@dataclass
class QualityConfig:
    """`python -m model_build quality`: the quality-parity rule on the tiny model's held-out split and at base size."""

    data_dir: Path = setting(
        Path("data/quality-val"),
        help="held-out split root (written if missing)",
        flag="--data",
        check=check_data_or_synth_out,
    )
    images: int = setting(200, help="held-out images scored by fp32, the seed recipe and the served runtime", minimum=1)
    seed: int = setting(11, help="seed of the synthetic held-out split", **SEED_BOUNDS)
    base_size: bool = setting(True, help="also teacher-force both int8 paths along fp32 at Florence-2-base size")
    caption_tokens: int = setting(20, help="pinned caption length at base size", minimum=1)
    detect_tokens: int = setting(60, help="pinned <OD> length at base size", minimum=1)
    base_images: int = setting(
        BASE_FIDELITY_IMAGES, help="random images the base-size teacher-forced steps are pooled over", minimum=1
    )


def check_quality(config: QualityConfig) -> QualityReport:
    """Build the served runtime from the embedded tiny model (and a random base-size model) and measure the rule."""
    from model_build.bench.baseline import base_model, base_prompt_ids, random_images, tiny_model_and_processor
    from model_build.data.synth import write_val_split
    from model_build.export.quantize import quantize_for_serving
    from model_build.export.serving_prep import prepare_for_serving

    model, processor = tiny_model_and_processor()
    if not (config.data_dir / "annotations" / "instances_val2017.json").is_file():
        write_val_split(config.data_dir, config.images, config.seed)
    report = QualityReport(
        split_quality(
            model, processor, prepare_for_serving(model, processor), config.data_dir, "val2017", config.images
        )
    )
    if config.base_size:
        from model_build.base.tiny import build_processor, build_tokenizer

        model = base_model()
        processor = build_processor(build_tokenizer(["a cat on a mat"]))
        prompts = base_prompt_ids()
        served = prepare_for_serving(model, processor, prompt_ids=prompts)
        tokens = {Task.CAPTION: config.caption_tokens, Task.DETECT: config.detect_tokens}
        report.fidelity = teacher_forced_fidelity(
            model, quantize_for_serving(model), served, processor, random_images(config.base_images), prompts, tokens
        )
        report.notes.append("base size: random weights, 480x640 random images, lengths pinned (EOS suppressed)")
    return report
