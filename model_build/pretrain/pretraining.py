"""Pretraining the embedded tiny Florence-2 from scratch: base-style captions and `<OD>` on synthetic scenes.

This stands in for Microsoft's pretraining, which we cannot download here: it gives LoRA a base that
already sees shapes and writes boxes, so fine-tuning only has to teach a new caption style. Two things
make it fit 20 minutes on 2 CPU cores: scenes live in memory at the serving size (`scene_pool`), and
dense per-cell supervision of the encoder's image tokens (`dense_supervision`) makes the model use the
image within a few hundred steps instead of thousands.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from handler.florence.tasks import IMAGE_SIZE, Task
from model_build.data.synth import check_synth_out
from model_build.outputs import replaceable_folder, write_folder
from model_build.settings import below_one, output_folder, setting
from model_build.training import TrainConfig

PROVENANCE_FILE = "PROVENANCE.json"
"""Written beside the model with how it was made; it marks a folder `pretrain-tiny` may replace."""
TINY_MODEL = "a model written by pretrain-tiny"


def _pretrain_training() -> TrainConfig:
    # The settings the embedded model was trained with (its PROVENANCE.json): ~18 min on 2 cores.
    return TrainConfig(steps=2500, batch_size=24, lr=3e-4, warmup_steps=50, log_every=10, checkpoint_every=100)


@dataclass
class PretrainConfig:
    """`python -m model_build pretrain-tiny`: every default of training the embedded tiny model, in one place."""

    out_dir: Path | None = setting(
        None,
        help="where the HF-layout model is written: new, empty or an earlier one (default: the embedded model folder)",
        flag="--out",
        check=replaceable_folder(PROVENANCE_FILE, TINY_MODEL),
    )
    run_dir: Path = setting(
        Path("runs/pretrain-tiny"), help="metrics, loss plot, checkpoint, eval.json", check=output_folder
    )
    val_dir: Path = setting(
        Path("data/synth-pretrain"),
        help="held-out val2017 split (same as `synth --seed S`'s), scored after training",
        check=check_synth_out,
    )
    full_scenes: int = setting(3000, help="scenes like the val split: one or two shapes on a noisy gradient", minimum=1)
    easy_scenes: int = setting(1000, help="scenes of one large shape on a flat background", minimum=0)
    easy_share: float = setting(
        0.5, help="share of samples drawn from the easy scenes, below 1", check=below_one
    )  # the full scenes are repeated share / (1 - share) times, so 1 has no meaning
    dense_weight: float = setting(
        1.0, help="weight of the per-cell grid loss next to the text loss; 0 = off", minimum=0
    )
    val_images: int = setting(100, help="held-out images scored after training", minimum=1)
    workers: int = setting(2, help="processes drawing the scenes", minimum=1)
    train: TrainConfig = setting(factory=_pretrain_training, help="optimisation (its --seed also seeds the scenes)")
    resume: bool = setting(False, help="continue from the run folder's checkpoint")

    @property
    def seed(self) -> int:
        return self.train.seed


def pretrain_tiny(config: PretrainConfig) -> Path:
    """Draw the scenes, train the tiny model from scratch, save it in HF layout and score it on val."""
    from model_build.base.tiny import EMBEDDED_DIR, build_processor, build_tokenizer, new_tiny_model
    from model_build.data.coco import InputEncoder
    from model_build.data.synth import caption_corpus
    from model_build.pretrain.dense_supervision import DenselySupervised
    from model_build.pretrain.scene_pool import ScenePool
    from model_build.training import check_run_dir, train

    check_run_dir(config.run_dir, config.resume)  # before the scenes are drawn
    started = time.perf_counter()
    tokenizer = build_tokenizer(caption_corpus())
    processor = build_processor(tokenizer, IMAGE_SIZE)
    model = new_tiny_model(tokenizer, seed=config.seed)
    pool = ScenePool(config.full_scenes, config.easy_scenes, config.seed, config.workers)
    items = pool.items([Task.CAPTION, Task.DETECT], config.easy_share)
    supervised = DenselySupervised(model, tokenizer, config.dense_weight)
    encoder = InputEncoder(processor)
    train(
        supervised,
        items,
        lambda batch: pool.collate(batch, encoder),
        config.train,
        config.run_dir,
        resume=config.resume,
        title="pretrain tiny: captions, boxes, grid",
    )

    minutes = round((time.perf_counter() - started) / 60, 1)
    report = score_on_val(model, processor, config)
    (config.run_dir / "eval.json").write_text(json.dumps(report, indent=2))
    provenance = {
        "made_by": "python -m model_build pretrain-tiny",
        "data": f"in-memory synthetic scenes, seed {config.seed}: {config.full_scenes} full + {config.easy_scenes} easy "
        f"({config.easy_share:.0%} of samples), base captions + <OD>, dense grid loss x{config.dense_weight}",
        "train": {
            "steps": config.train.steps,
            "batch_size": config.train.batch_size,
            "lr": config.train.lr,
            "minutes": minutes,
        },
        "val": {
            "split": f"{config.val_dir}/val2017",
            "images": report["images"],
            "caption_exact_match_base_style": report["caption"]["exact_match"],
            "map50": report["detect"]["map50"],
            "map": report["detect"]["map"],
        },
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")

    out = Path(config.out_dir or EMBEDDED_DIR)
    write_folder(out, write, marker=PROVENANCE_FILE, what=TINY_MODEL)
    return out


def score_on_val(model, processor, config: PretrainConfig) -> dict:
    """Base-style caption scores and COCO mAP on the held-out val split of this seed (rewritten: ~2 s)."""
    from model_build.data.synth import write_val_split
    from model_build.evaluate import EvalConfig, evaluate

    write_val_split(config.val_dir, config.val_images, config.seed)
    model.eval()
    return evaluate(
        model, processor, EvalConfig(data_dir=config.val_dir, caption_style="base", max_images=config.val_images)
    )
