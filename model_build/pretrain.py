"""Pretraining the embedded tiny Florence-2 on synthetic data: base-style captions and `<OD>`.

This stands in for Microsoft's pretraining, which we cannot download here: it gives LoRA a base that
already sees shapes and writes boxes, so fine-tuning only has to teach a new caption style.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from handler.tasks import IMAGE_SIZE, Task
from model_build.data import load_samples
from model_build.synth import caption_corpus, synthesize, write_split
from model_build.tiny import EMBEDDED_DIR, build_processor, build_tokenizer, new_tiny_model
from model_build.training import TrainConfig, train


EASY_SPLIT = "easy2017"
"""Extra training split of single large shapes, mixed in so the model learns to look at the image."""


@dataclass
class PretrainConfig:
    data_dir: Path = Path("data/synth-pretrain")
    out_dir: Path = EMBEDDED_DIR
    run_dir: Path = Path("runs/pretrain-tiny")
    train_images: int = 2000
    easy_images: int = 1500
    look_steps: int = 150
    """Phase-1 steps on easy captions before the full mix."""
    look_lr: float = 1e-3
    tasks: tuple[Task, ...] = (Task.CAPTION, Task.DETECT)
    """Phase-2 tasks."""
    val_images: int = 100
    seed: int = 0


def pretrain_tiny(config: PretrainConfig, train_config: TrainConfig, resume: bool = False) -> Path:
    """Synthesize data (if absent), train the tiny model from scratch and save it in HF layout."""
    if not (config.data_dir / "annotations" / "instances_train2017.json").is_file():
        synthesize(config.data_dir, train=config.train_images, val=config.val_images, seed=config.seed)
    if not (config.data_dir / "annotations" / f"instances_{EASY_SPLIT}.json").is_file():
        write_split(config.data_dir, EASY_SPLIT, config.easy_images, config.seed, first_id=2_000_000, easy=True)
    tokenizer = build_tokenizer(caption_corpus())
    processor = build_processor(tokenizer, IMAGE_SIZE)
    model = new_tiny_model(tokenizer, seed=config.seed)
    # Phase 1: captions of single large shapes on flat backgrounds. From scratch, the decoder first
    # learns the caption prior and ignores the image; this strong, easy signal breaks that in ~100 steps.
    easy = load_samples(config.data_dir, EASY_SPLIT, [Task.CAPTION], caption_style="base")
    warm = replace(train_config, steps=config.look_steps, lr=config.look_lr, warmup_steps=min(30, config.look_steps))
    train(model, processor, easy, warm, config.run_dir / "phase1-look", resume=resume, title="pretrain phase 1: look")
    # Phase 2: every scene, base captions and boxes.
    tasks = list(config.tasks)
    samples = load_samples(config.data_dir, "train2017", tasks, caption_style="base")
    samples += load_samples(config.data_dir, EASY_SPLIT, tasks, caption_style="base")
    train(model, processor, samples, train_config, config.run_dir / "phase2-all", resume=resume,
          title="pretrain phase 2: captions and boxes")

    out = Path(config.out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "PROVENANCE.json").write_text(
        json.dumps(
            {
                "made_by": "python -m model_build pretrain-tiny",
                "data": f"synthetic shapes, seed {config.seed}, {config.train_images} train + {config.easy_images} easy images,"
                " base captions + <OD>",
                "train": {"steps": train_config.steps, "batch_size": train_config.batch_size, "lr": train_config.lr},
            },
            indent=2,
        )
    )
    return out
