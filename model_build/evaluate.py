"""Scoring a model on a COCO-format split: CIDEr, BLEU-4 and exact match for captions, COCO mAP for boxes.

Captions are scored with pycocoevalcap's standard `Cider` and `Bleu(4)` after its PTB tokenizer (a
Java program). Boxes go through pycocotools' `COCOeval`, ranked by each box's score (the mean probability
of its tokens, `handler.florence.tasks.detection_score`); the report puts beside it the mAP with one
constant score for every box (what Florence-2 tools report without scores), so the gain from scoring is
measured, and the mean score of right and of wrong boxes. Predictions come from
`handler.florence.engine.predict_batch`, the served decode path.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from handler.florence.engine import Prediction, predict_batch
from handler.florence.tasks import IMAGE_SIZE, Task
from model_build.base.loading import check_base, check_image_size
from model_build.data.coco import ImageFrame, ImageId, ImageRecord, Instances, task_files
from model_build.finetune.lora import check_adapter
from model_build.settings import output_file, setting


def is_artifact_folder(path: Path) -> bool:
    """A folder with a `manifest.json` of any kind: a link, FIFO or folder there is a broken artifact,
    which `Manifest.read` names, not an adapter folder to look for weights in."""
    from handler.florence.artifact import MANIFEST_FILE

    return os.path.lexists(path / MANIFEST_FILE)


def check_model_folder(path: Path) -> None:
    """`check` for the model argument: an artifact whose manifest reads, or a readable adapter folder."""
    from handler.florence.artifact import ArtifactError, Manifest

    if not path.is_dir():
        raise ValueError(f"{path} is not a folder; give an artifact folder or a finetune run folder")
    if is_artifact_folder(path):
        try:
            Manifest.read(path)
        except ArtifactError as exc:
            raise ValueError(str(exc)) from exc
        return
    check_adapter(path)


@dataclass
class EvalConfig:
    """`python -m model_build eval`: what to score, on which split, and where the report goes."""

    model: Path | None = setting(
        None,
        help="artifact folder (has manifest.json) or finetune run/adapter folder; omit with --base",
        positional=True,
        check=check_model_folder,
    )
    base: str | None = setting(None, help="score this base alone, or override an adapter's base", check=check_base)
    image_size: int | None = setting(
        None, help="for --base or an adapter (default: 384, or the adapter's)", check=check_image_size
    )
    data_dir: Path = setting(Path("data/synth"), help="COCO-format root", flag="--data")
    split: str = setting("val2017", help="images folder / annotation suffix")
    tasks: tuple[Task, ...] = setting((Task.CAPTION, Task.DETECT), help="comma-separated: caption,detect")
    caption_style: str = setting(
        "",
        help="references: '' = captions_{split}.json (COCO style), 'base' = captions_base_{split}.json",
        choices=("", "base"),
    )
    max_images: int | None = setting(None, help="score only the first N images (default: all)", minimum=1)
    batch_size: int = setting(8, help="images per generate call for a plain model", minimum=1)
    out: Path | None = setting(None, help="also write the JSON report here", check=output_file)


def load_model(source: str | Path | None, base: str | None = None, image_size: int | None = None):
    """(model, processor, description) for an artifact folder, a finetune run/adapter folder, or a base."""
    if source is not None and is_artifact_folder(Path(source)):
        from handler.florence.artifact import load_artifact

        loaded = load_artifact(source)
        return (
            loaded.model,
            loaded.processor,
            {"kind": "artifact", "path": str(source), "model_sha256": loaded.manifest.model_sha256},
        )
    if source is not None:
        from model_build.finetune.lora import load_adapter

        peft_model, processor, info = load_adapter(source, base=base, image_size=image_size)
        return (
            peft_model.merge_and_unload().eval(),
            processor,
            {"kind": "adapter", "path": str(source), "base": base or info.base, "adapter_sha256": info.adapter_sha256},
        )
    if base is None:
        raise ValueError("evaluate needs a model folder or --base")
    from model_build.base.loading import load_base

    model, processor = load_base(base, image_size or IMAGE_SIZE)
    return model.eval(), processor, {"kind": "base", "base": base}


def split_records(
    data_dir: Path,
    split: str,
    max_images: int | None,
    tasks: tuple[Task, ...] | list[Task] = (Task.CAPTION, Task.DETECT),
    caption_style: str = "",
) -> list[ImageRecord]:
    """The usable images of a split, by id: from the instances file, else the captions file.

    Without `<OD>` in `tasks` only the captions file is read: the instances file may list other images
    (scoring captions on those alone) or be one the caption scores do not need at all.
    """
    from model_build.data.coco import DataError, captions_file, id_order, read_annotation_file, usable_images

    instances = data_dir / "annotations" / f"instances_{split}.json"
    captions = captions_file(data_dir, split, caption_style)
    files = (instances, captions) if Task.DETECT in tasks else (captions,)
    for path in files:
        if path.is_file():
            images = usable_images(data_dir, split, path, read_annotation_file(path))
            records = [images[i] for i in sorted(images, key=id_order)]
            return records[:max_images] if max_images else records
    raise DataError(f"{data_dir / 'annotations'}: no {' or '.join(path.name for path in files)}")


def predict_split(
    model, processor, config: EvalConfig, records: list[ImageRecord]
) -> dict[Task, dict[ImageId, Prediction]]:
    """Greedy predictions for every image and task, batched, with a progress bar.

    Images are decoded as serving decodes them (upright); boxes come back in upright pixels.
    """
    from model_build.data.coco import open_rgb

    predictions: dict[Task, dict[ImageId, Prediction]] = {task: {} for task in config.tasks}
    batches = [records[i : i + config.batch_size] for i in range(0, len(records), config.batch_size)]
    with tqdm(total=len(records) * len(config.tasks), desc="eval predictions", unit="img") as progress:
        for batch in batches:
            images = [open_rgb(r.path) for r in batch]
            for task in config.tasks:
                for record, prediction in zip(batch, predict_batch(model, processor, images, task), strict=False):
                    predictions[task][record.id] = prediction
                progress.update(len(batch))
    return predictions


def _tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    """PTB tokenization as in the COCO caption evaluation; a lowercase word split when Java is missing."""
    if shutil.which("java"):
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [" ".join(re.findall(r"[a-z0-9]+", c.lower())) for c in v] for k, v in captions.items()}


def caption_metrics(predicted: dict[int, str], references: dict[int, list[str]]) -> dict:
    """CIDEr (CIDEr-D as in coco-caption), BLEU-4 and the rate of captions equal to some reference."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    ids = [i for i in predicted if i in references]
    if not ids:
        return {"images": 0, "cider": None, "bleu4": None, "exact_match": None}
    res = _tokenize({i: [predicted[i] or ""] for i in ids})
    gts = _tokenize({i: references[i] for i in ids})
    cider, _ = Cider().compute_score(gts, res)
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    exact = sum(" ".join(predicted[i].split()) in {" ".join(r.split()) for r in references[i]} for i in ids)
    return {
        "images": len(ids),
        "cider": round(float(cider), 4),
        "bleu4": round(float(bleu[3]), 4),
        "exact_match": round(exact / len(ids), 4),
        "tokenizer": "ptb" if shutil.which("java") else "simple",
    }


def read_references(data_dir: Path, split: str, style: str) -> dict[ImageId, list[str]]:
    """Reference captions per image, read by the same rules as training (blank ones skipped)."""
    from model_build.data.coco import read_captions

    return read_captions(data_dir, split, style)[1]


CORRECT_IOU = 0.5
"""A box is correct when it overlaps a ground-truth box of its label by at least this IoU."""


def _xywh(box: tuple[float, float, float, float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _coco_results(
    predicted: dict[ImageId, Prediction],
    category: dict[str, ImageId],
    frames: dict[ImageId, ImageFrame],
    constant_score: bool,
) -> list[dict]:
    """Predictions as pycocotools results, boxes mapped from the upright image to the annotation frame."""
    return [
        {
            "image_id": image_id,
            "category_id": category[det.label],
            "bbox": _xywh(frames[image_id].to_annotation(det.box)),
            "score": 1.0 if constant_score else det.score,
        }
        for image_id, prediction in predicted.items()
        for det in prediction.detections
        if det.label in category
    ]


def _coco_map(truth, results: list[dict], image_ids: list[ImageId]) -> dict[str, float]:
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        "map": round(max(0.0, float(evaluator.stats[0])), 4),
        "map50": round(max(0.0, float(evaluator.stats[1])), 4),
    }


def score_separation(predicted: dict[ImageId, Prediction], truth, frames: dict[ImageId, ImageFrame]) -> dict:
    """Mean score of correct boxes (IoU >= 0.5 with a same-label ground-truth box) and of the others."""
    from pycocotools import mask

    names = {c["id"]: c["name"] for c in truth.loadCats(truth.getCatIds())}
    scores: dict[bool, list[float]] = {True: [], False: []}
    for image_id, prediction in predicted.items():
        annotations = truth.loadAnns(truth.getAnnIds(imgIds=[image_id]))
        for det in prediction.detections:
            same_label = [a["bbox"] for a in annotations if names[a["category_id"]] == det.label]
            box = _xywh(frames[image_id].to_annotation(det.box))
            ious = mask.iou([box], same_label, [0] * len(same_label)) if same_label else []
            scores[bool(len(ious) and ious.max() >= CORRECT_IOU)].append(det.score)

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {
        "correct": len(scores[True]),
        "wrong": len(scores[False]),
        "mean_score_correct": mean(scores[True]),
        "mean_score_wrong": mean(scores[False]),
    }


def detection_metrics(
    predicted: dict[ImageId, Prediction], data_dir: Path, split: str, instances: Instances | None = None
) -> dict:
    """mAP@[.5:.95] and mAP@.5 ranked by score and with a constant score, on the evaluated images only.

    The truth is the instances file as training reads it (`read_instances`: boxes clipped, bad ones
    skipped, categories of one name merged), in its own pixel frame; predictions are mapped into it.
    """
    from pycocotools.coco import COCO

    from model_build.data.coco import read_instances

    instances = read_instances(data_dir, split) if instances is None else instances
    dataset, number = instances.coco_dataset()
    predicted = {number[i]: p for i, p in predicted.items() if i in number}
    frames = {number[i]: record.frame for i, record in instances.images.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
    category = {c["name"]: c["id"] for c in truth.loadCats(truth.getCatIds())}
    scored = _coco_results(predicted, category, frames, constant_score=False)
    constant = _coco_results(predicted, category, frames, constant_score=True)
    image_ids = sorted(predicted)
    detections = sum(len(p.detections) for p in predicted.values())
    boxes = sum(not ann["iscrowd"] for ann in truth.loadAnns(truth.getAnnIds(imgIds=image_ids)))
    undefined = {"map": None, "map50": None}  # no box to find: COCOeval's -1, which was reported as 0.0
    return {
        "images": len(predicted),
        "boxes": boxes,
        "detections": len(scored),
        "unknown_labels": detections - len(scored),
        **(_coco_map(truth, scored, image_ids) if boxes else undefined),
        "constant_score": _coco_map(truth, constant, image_ids) if boxes else undefined,
        "scores": score_separation(predicted, truth, frames),
    }


@dataclass
class EvalData:
    """What a split is scored against, read whole before any model loads: a data error after hours of
    predictions on a CPU would waste them."""

    records: list[ImageRecord]
    references: dict[ImageId, list[str]] | None
    instances: Instances | None


def read_eval_data(config: EvalConfig) -> EvalData:
    """The split's images and the truth of each task of `config`, or a DataError naming the file."""
    from model_build.data.coco import read_instances

    task_files(config.data_dir, config.split, config.tasks, config.caption_style)
    records = split_records(config.data_dir, config.split, config.max_images, config.tasks, config.caption_style)
    references = None
    if Task.CAPTION in config.tasks:
        references = read_references(config.data_dir, config.split, config.caption_style)
    instances = read_instances(config.data_dir, config.split) if Task.DETECT in config.tasks else None
    return EvalData(records, references, instances)


def evaluate(model, processor, config: EvalConfig, samples_out: int = 5, data: EvalData | None = None) -> dict:
    """Predict a split and score it; include a few example outputs so a reader sees the style.

    `data` is the split as `read_eval_data` read it (read here if not given).
    """
    data = read_eval_data(config) if data is None else data
    records = data.records
    predictions = predict_split(model, processor, config, records)
    report: dict = {"data": str(config.data_dir), "split": config.split, "images": len(records)}
    if Task.CAPTION in config.tasks and data.references is not None:
        captions = {i: p.caption or "" for i, p in predictions[Task.CAPTION].items()}
        references = data.references
        report["caption"] = {
            "references": config.caption_style or "coco",
            **caption_metrics(captions, references),
            "examples": [
                {"image_id": i, "caption": captions[i], "reference": references.get(i, [""])[0]}
                for i in list(captions)[:samples_out]
            ],
        }
    if Task.DETECT in config.tasks:
        report["detect"] = detection_metrics(predictions[Task.DETECT], config.data_dir, config.split, data.instances)
    return report
