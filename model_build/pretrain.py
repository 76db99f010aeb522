"""Pretraining the embedded tiny Florence-2 from scratch: base-style captions and `<OD>` on synthetic scenes.

This stands in for Microsoft's pretraining, which we cannot download here: it gives LoRA a base that
already sees shapes and writes boxes, so fine-tuning only has to teach a new caption style. Two things
make it fit 20 minutes on 2 CPU cores: scenes live in memory at the serving size (`scene_pool`), and
dense per-cell supervision of the encoder's image tokens (`dense_supervision`) makes the model use the
image within a few hundred steps instead of thousands.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from handler.tasks import IMAGE_SIZE, Task
from model_build.training import TrainConfig

PRETRAIN_STEPS = 2500
PRETRAIN_BATCH = 24
PRETRAIN_LR = 3e-4


@dataclass
class PretrainConfig:
    out_dir: Path | None = None
    """Where the HF-layout model goes; None = the embedded folder the project ships."""
    run_dir: Path = Path("runs/pretrain-tiny")
    val_dir: Path = Path("data/synth-pretrain")
    """Gets the held-out `val2017` split (identical to `synth --seed S`'s), written and scored after training."""
    full_scenes: int = 3000
    """Scenes like the val split: one or two shapes on a noisy gradient."""
    easy_scenes: int = 1000
    """Scenes of one large shape on a flat background: the clearest signal of what a word looks like."""
    easy_share: float = 0.5
    dense_weight: float = 1.0
    """Weight of the per-cell loss next to the captions' and boxes' language-model loss; 0 turns it off."""
    val_images: int = 100
    seed: int = 0
    workers: int = 2
    """Processes drawing the scenes."""


def pretrain_tiny(config: PretrainConfig, train_config: TrainConfig, resume: bool = False) -> Path:
    """Draw the scenes, train the tiny model from scratch, save it in HF layout and score it on val."""
    from model_build.data import InputEncoder
    from model_build.dense_supervision import DenselySupervised
    from model_build.scene_pool import ScenePool
    from model_build.synth import caption_corpus
    from model_build.tiny import EMBEDDED_DIR, build_processor, build_tokenizer, new_tiny_model
    from model_build.training import train

    started = time.perf_counter()
    tokenizer = build_tokenizer(caption_corpus())
    processor = build_processor(tokenizer, IMAGE_SIZE)
    model = new_tiny_model(tokenizer, seed=config.seed)
    pool = ScenePool(config.full_scenes, config.easy_scenes, config.seed, config.workers)
    items = pool.items([Task.CAPTION, Task.DETECT], config.easy_share)
    supervised = DenselySupervised(model, tokenizer, config.dense_weight)
    encoder = InputEncoder(processor)
    train(supervised, items, lambda batch: pool.collate(batch, encoder), train_config, config.run_dir,
          resume=resume, title="pretrain tiny: captions, boxes, grid")

    out = Path(config.out_dir or EMBEDDED_DIR)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    minutes = round((time.perf_counter() - started) / 60, 1)
    report = score_on_val(model, processor, config)
    (config.run_dir / "eval.json").write_text(json.dumps(report, indent=2))
    provenance = {
        "made_by": "python -m model_build pretrain-tiny",
        "data": f"in-memory synthetic scenes, seed {config.seed}: {config.full_scenes} full + {config.easy_scenes} easy "
                f"({config.easy_share:.0%} of samples), base captions + <OD>, dense grid loss x{config.dense_weight}",
        "train": {"steps": train_config.steps, "batch_size": train_config.batch_size, "lr": train_config.lr,
                  "minutes": minutes},
        "val": {"split": f"{config.val_dir}/val2017", "images": report["images"],
                "caption_exact_match_base_style": report["caption"]["exact_match"],
                "map50": report["detect"]["map50"], "map": report["detect"]["map"]},
    }
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def score_on_val(model, processor, config: PretrainConfig) -> dict:
    """Base-style caption scores and COCO mAP on the held-out val split of this seed (rewritten: ~2 s)."""
    from model_build.evaluate import EvalConfig, evaluate
    from model_build.synth import write_val_split

    write_val_split(config.val_dir, config.val_images, config.seed)
    model.eval()
    return evaluate(model, processor, EvalConfig(data_dir=config.val_dir, caption_style="base",
                                                max_images=config.val_images))
