"""`python -m model_build rehearse`: the real build and serving path once, at Florence-2-base size.

Stages, each in a fresh interpreter so its peak memory is its own (and includes its imports):

1. `base`: a random-weight folder in `florence-community/Florence-2-base`'s layout (`random_base`);
2. `synth`: a small synthetic COCO-format dataset;
3. `finetune`: `model_build.finetune` with `--base <that folder>` for a few steps;
4. `fuse`: merge, int8, the parity gate with its bounds at zero (random weights cannot pass a quality
   gate; the gate still runs, so its code path is exercised), the artifact folder;
5. `serve`: the handler's FastAPI app on that artifact (`TestClient`), one `/analyze` with a JPEG body;
6. `decode`: the served engine on the same image with each task pinned to its longest answer (40 and 256
   tokens). A random Florence-2 answers `</s>` at once (the decoder starts from `</s>`, and a random decoder
   with a tied `lm_head` mostly reads its input token back), so `/analyze` alone would run one decoder
   step and never decode a random id.

The parent prints a table (wall seconds, peak RSS) and writes `report.json` under the output folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from model_build.outputs import replaceable_folder
from model_build.settings import SEED_BOUNDS, setting

STAGES = ("base", "synth", "finetune", "fuse", "serve", "decode")
REPORT_FILE = "report.json"
CONFIG_FILE = "config.json"
RESULTS_DIR = "stages"
WORK_FOLDERS = ("base", "data", "finetune", "artifact")
"""Deleted after a passing run unless --keep: ~0.5 GB of fp16 base and ~0.25 GB of artifact at full size."""
REDUCED_BPE_ENTRIES = 2000
"""--no-full-size: enough merges to look real, learned in seconds."""
GATE_NOTE = (
    "parity gate bounds set to 0: random weights cannot pass a quality gate; the gate ran, its figures are reported"
)


@dataclass
class RehearsalConfig:
    """`python -m model_build rehearse`: the full-size rehearsal's knobs; the defaults are what docs/build.md reports."""

    out_dir: Path = setting(
        Path("runs/rehearsal"),
        help="output folder: new, empty or an earlier rehearsal's (report.json, and the rest with --keep)",
        flag="--out",
        check=replaceable_folder(RESULTS_DIR, "a rehearsal's folder"),
    )
    steps: int = setting(3, help="fine-tuning steps", minimum=1)
    batch_size: int = setting(2, help="fine-tuning samples per step", minimum=1)
    threads: int = setting(0, help="torch threads in each stage (0: torch's default, every core)", minimum=0)
    parity_images: int = setting(
        2, help="held-out images the (relaxed) parity gate compares fp32 and int8 on", minimum=1
    )
    full_size: bool = setting(
        True, help="Florence-2-base's sizes; --no-full-size keeps the layout at the tiny model's widths (for tests)"
    )
    keep: bool = setting(
        False, help="keep the random base, data, run and artifact (default: only the report, unless a stage failed)"
    )
    seed: int = setting(0, help="seed of the random weights, the tokenizer's corpus and the data", **SEED_BOUNDS)

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RehearsalConfig:
        data = json.loads(text)
        return cls(**{f.name: Path(data[f.name]) if f.name == "out_dir" else data[f.name] for f in fields(cls)})


@dataclass
class StageResult:
    name: str
    wall_s: float
    peak_rss_mib: float | None
    ok: bool
    details: dict[str, Any]


def _paths(config: RehearsalConfig) -> dict[str, Path]:
    root = config.out_dir
    return {name: root / name for name in WORK_FOLDERS}


def _sample_image(config: RehearsalConfig) -> Path:
    """The val image after those the parity gate compared on, for `/analyze` and the pinned decode."""
    from model_build.evaluate import split_records

    return split_records(_paths(config)["data"], "val2017", config.parity_images + 1)[-1].path


# ---- the stages (each runs in its own child process) ----


def _stage_base(config: RehearsalConfig) -> dict[str, Any]:
    from model_build.base.loading import resolve_base
    from model_build.rehearsal.random_base import write_random_base
    from model_build.rehearsal.tokenizer import BART_BPE_ENTRIES

    folder = _paths(config)["base"]
    written = write_random_base(
        folder,
        bpe_entries=BART_BPE_ENTRIES if config.full_size else REDUCED_BPE_ENTRIES,
        full_size=config.full_size,
        seed=config.seed,
    )
    resolve_base(str(folder))  # refuses anything that is not a native Florence-2 folder
    return asdict(written)


def _stage_synth(config: RehearsalConfig) -> dict[str, Any]:
    from model_build.data.synth import synthesize

    train, val = max(8, config.steps * config.batch_size), config.parity_images + 1
    synthesize(_paths(config)["data"], train=train, val=val, seed=config.seed)
    return {"train_images": train, "val_images": val}


def _stage_finetune(config: RehearsalConfig) -> dict[str, Any]:
    from dataclasses import replace

    from model_build.finetune.lora import FinetuneConfig, finetune

    paths = _paths(config)
    finetune_config = FinetuneConfig(data_dir=paths["data"], run_dir=paths["finetune"], base=str(paths["base"]))
    # lr 1e-4: the docs' range for Florence-2-base; one checkpoint at the end, every step logged.
    finetune_config.train = replace(
        finetune_config.train,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=1e-4,
        warmup_steps=1,
        log_every=1,
        checkpoint_every=config.steps,
        seed=config.seed,
    )
    info = finetune(finetune_config)
    metrics = json.loads((paths["finetune"] / "metrics.json").read_text())
    adapter = paths["finetune"] / "adapter"
    return {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "losses": [round(row["loss"], 4) for row in metrics.get("history", [])],
        "train_seconds": metrics.get("train_seconds"),
        "adapter_bytes": sum(f.stat().st_size for f in adapter.iterdir()),
        "lora": info.lora,
    }


def _stage_fuse(config: RehearsalConfig) -> dict[str, Any]:
    from model_build.export.fuse import FuseConfig, fuse

    paths = _paths(config)
    manifest = fuse(
        FuseConfig(
            out_dir=paths["artifact"],
            adapter=paths["finetune"],
            data_dir=paths["data"],
            parity_images=config.parity_images,
            min_caption_agreement=0.0,
            min_box_iou=0.0,
            baseline_slack=-1.0,  # the bounds alone decide, and they are 0
        )
    )
    folder_bytes = sum(f.stat().st_size for f in paths["artifact"].rglob("*") if f.is_file())
    return {
        "gate": GATE_NOTE,
        "parity": manifest.parity,
        "model_bytes": manifest.model_bytes,
        "artifact_bytes": folder_bytes,
        "fuse_seconds": manifest.extra.get("fuse_seconds"),
    }


def _stage_serve(config: RehearsalConfig) -> dict[str, Any]:
    import os

    paths = _paths(config)
    os.environ["ARTIFACT_DIR"] = str(paths["artifact"].resolve())
    if config.threads:
        os.environ["TORCH_THREADS"] = str(config.threads)
    from fastapi.testclient import TestClient

    from handler.http.api import create_app

    client = TestClient(create_app(), raise_server_exceptions=False)
    started = time.perf_counter()
    response = client.post(
        "/analyze", content=_sample_image(config).read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    seconds = time.perf_counter() - started
    answer = response.json()
    if response.status_code != 200:
        raise RuntimeError(f"/analyze answered {response.status_code}: {answer}")
    return {
        "status": response.status_code,
        "first_request_s": round(seconds, 2),  # includes loading the artifact
        "caption": answer["caption"],
        "caption_chars": len(answer["caption"]),
        "boxes": len(answer["detections"]),
        "timings_ms": answer.get("timings_ms"),
        "model_sha": answer["model_sha"],
    }


def _stage_decode(config: RehearsalConfig) -> dict[str, Any]:
    from handler.florence.artifact import load_artifact
    from handler.florence.engine import Engine
    from handler.florence.tasks import MAX_NEW_TOKENS, Task
    from model_build.data.coco import open_rgb

    loaded = load_artifact(_paths(config)["artifact"])
    tasks = [Task.CAPTION, Task.DETECT]
    engine = Engine(loaded.model, loaded.processor, new_tokens={task: MAX_NEW_TOKENS[task] for task in tasks})
    analysis = engine.run(open_rgb(_sample_image(config)), tasks)
    caption = analysis.predictions[Task.CAPTION].caption
    return {
        "new_tokens": {task.api_name: MAX_NEW_TOKENS[task] for task in tasks},
        "artifact_load_s": round(loaded.load_seconds, 2),
        "caption_chars": len(caption),
        "boxes": len(analysis.predictions[Task.DETECT].detections),
        "timings_ms": analysis.timings_ms,
    }


STAGE_FUNCTIONS = {
    "base": _stage_base,
    "synth": _stage_synth,
    "finetune": _stage_finetune,
    "fuse": _stage_fuse,
    "serve": _stage_serve,
    "decode": _stage_decode,
}


def run_stage(name: str, config_path: Path) -> int:
    """Child side: run one stage and write its result (with this process's peak RSS) next to the report."""
    from model_build.bench.child import peak_rss_mib

    config = RehearsalConfig.from_json(config_path.read_text())
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    details = STAGE_FUNCTIONS[name](config)
    result = {"details": details, "peak_rss_mib": round(peak_rss_mib(), 1)}
    (config.out_dir / RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2))
    return 0


# ---- the parent ----


def _run_child(name: str, config: RehearsalConfig) -> StageResult:
    result_file = config.out_dir / RESULTS_DIR / f"{name}.json"
    result_file.unlink(missing_ok=True)
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-m", "model_build.rehearsal.stage", name, str(config.out_dir / CONFIG_FILE)], check=False
    )
    wall = round(time.perf_counter() - started, 1)
    if child.returncode != 0 or not result_file.is_file():
        return StageResult(name, wall, None, False, {"error": f"exit status {child.returncode}"})
    data = json.loads(result_file.read_text())
    return StageResult(name, wall, data["peak_rss_mib"], True, data["details"])


def summary(results: list[StageResult]) -> dict[str, Any]:
    """The figures the issue asks for: per-stage wall and peak RSS, the artifact's size, the /analyze answer."""
    by_name = {r.name: r for r in results}
    fuse, serve, decode = by_name.get("fuse"), by_name.get("serve"), by_name.get("decode")
    mib = 1024 * 1024
    return {
        "passed": len(results) == len(STAGES) and all(r.ok for r in results),
        "total_wall_s": round(sum(r.wall_s for r in results), 1),
        "max_peak_rss_mib": max((r.peak_rss_mib or 0.0) for r in results) if results else None,
        "artifact_mib": round(fuse.details["artifact_bytes"] / mib, 1) if fuse and fuse.ok else None,
        "model_pt_mib": round(fuse.details["model_bytes"] / mib, 1) if fuse and fuse.ok else None,
        "analyze": (
            {key: serve.details[key] for key in ("status", "caption_chars", "boxes", "first_request_s")}
            if serve and serve.ok
            else None
        ),
        "pinned_decode": (
            {key: decode.details[key] for key in ("new_tokens", "timings_ms")} if decode and decode.ok else None
        ),
    }


def format_table(results: list[StageResult], figures: dict[str, Any]) -> str:
    lines = [f"{'stage':<10} {'wall s':>8} {'peak RSS MiB':>13}  ok", "-" * 37]
    for r in results:
        rss = f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib is not None else "-"
        lines.append(f"{r.name:<10} {r.wall_s:>8.1f} {rss:>13}  {'yes' if r.ok else 'NO'}")
    lines.append("-" * 37)
    lines.append(f"{'total':<10} {figures['total_wall_s']:>8.1f}")
    if figures["artifact_mib"] is not None:
        lines.append(f"artifact: {figures['artifact_mib']} MiB (model.pt {figures['model_pt_mib']} MiB)")
    if figures["analyze"]:
        a = figures["analyze"]
        lines.append(
            f"/analyze: status {a['status']}, caption {a['caption_chars']} chars, {a['boxes']} boxes, "
            f"first request {a['first_request_s']} s (with the artifact load)"
        )
    if figures["pinned_decode"]:
        pinned, t = figures["pinned_decode"]["new_tokens"], figures["pinned_decode"]["timings_ms"]
        lines.append(
            f"pinned decode (caption {pinned['caption']}, <OD> {pinned['detect']} tokens, one batch): "
            f"vision {t.get('vision')} ms, caption {t['caption']} ms, <OD> {t['detect']} ms, total {t['total']} ms"
        )
    return "\n".join(lines)


def rehearse(config: RehearsalConfig) -> dict[str, Any]:
    """Run every stage in order (stopping at the first failure); print the table; write and return the report."""
    from tqdm import tqdm

    from model_build.bench.baseline import hardware

    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / RESULTS_DIR).mkdir(exist_ok=True)
    for folder in _paths(config).values():
        shutil.rmtree(folder, ignore_errors=True)  # a rehearsal always starts from nothing
    (config.out_dir / CONFIG_FILE).write_text(config.to_json())
    results: list[StageResult] = []
    progress = tqdm(STAGES, desc="rehearsal", unit="stage")
    for name in progress:
        progress.set_postfix_str(name)
        results.append(_run_child(name, config))
        if not results[-1].ok:
            break
    figures = summary(results)
    report = {
        "config": json.loads(config.to_json()),
        "machine": hardware(),
        "figures": figures,
        "stages": [asdict(r) for r in results],
        "note": GATE_NOTE,
    }
    (config.out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    print(format_table(results, figures))
    print(GATE_NOTE)
    print(f"report: {config.out_dir / REPORT_FILE}")
    if figures["passed"] and not config.keep:  # a failed rehearsal keeps its files to look into
        for folder in _paths(config).values():
            shutil.rmtree(folder, ignore_errors=True)
    return report
