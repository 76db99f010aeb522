"""Side-by-side benchmark: the seed recipe vs. the served fast runtime, at full Florence-2-base size.

The base architecture is built from config with random weights (no hub here), so the figures are
about compute, not answer quality. Each timed request is run with a pinned number of new tokens
(EOS suppressed until then) so both paths do identical work. The seed recipe is: merged model,
int8 `quantize_dynamic`, 384 x 384, greedy HF `generate`, one call per task. The served path is
`handler.florence.engine.Engine.run` on the model `load_artifact` loads from the artifact `fuse` would
write, as the handler runs it. Both paths are timed loaded from their artifacts, not as built.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from handler.config import available_cpus
from handler.florence.tasks import IMAGE_SIZE, Task
from model_build.bench.baseline import (
    base_model,
    base_prompt_ids,
    baseline_generate,
    decoding_processor,
    hardware,
    random_images,
    time_call,
    tiny_model_and_processor,
)
from model_build.bench.peer import peer_rows, streaming_floor
from model_build.bench.results import BenchResult, ColdStart, DecodeFloor, Hardware, LatencyRow, Stats
from model_build.export.quality import BASE_FIDELITY_IMAGES
from model_build.settings import output_file, output_folder, setting


@dataclass
class BenchConfig:
    """`python -m model_build bench`: run counts, threads, token counts and where the report goes."""

    quick: bool = setting(False, help="tiny model, few runs: a smoke test of the code paths (timings mean nothing)")
    runs: int | None = setting(None, help="timed runs per figure (default: 9, quick 2)", minimum=1)
    warmup: int | None = setting(None, help="untimed runs first (default: 2, quick 1)", minimum=0)
    threads: int = setting(
        factory=available_cpus, help="torch threads (default: CPUs available to this process)", minimum=1
    )
    caption_tokens: int = setting(20, help="new tokens per caption, pinned on both paths", minimum=1)
    detect_tokens: int = setting(60, help="new tokens per <OD>, pinned on both paths", minimum=1)
    cold_runs: int | None = setting(None, help="fresh-process cold starts, best kept (default: 3, quick 1)", minimum=1)
    profile: Path | None = setting(
        None, help="also write a stage breakdown and torch.profiler tables to this file", check=output_file
    )
    out: Path | None = setting(
        None, help="folder for benchmarks.{md,json,png} (default: docs/, none with --quick)", check=output_folder
    )
    fidelity_images: int | None = setting(
        None,
        help=f"random images the teacher-forced quality rows pool (default {BASE_FIDELITY_IMAGES}, quick 2)",
        minimum=1,
    )
    ort: bool = setting(True, help="time ONNX Runtime int8 as a peer (needs onnx, onnxscript, onnxruntime: dev extra)")

    def resolved(self) -> BenchConfig:
        """The automatic run counts filled in for the chosen mode."""
        return replace(
            self,
            runs=self.runs or (2 if self.quick else 9),
            warmup=self.warmup if self.warmup is not None else (1 if self.quick else 2),
            cold_runs=self.cold_runs or (1 if self.quick else 3),
            fidelity_images=self.fidelity_images or (2 if self.quick else BASE_FIDELITY_IMAGES),
            out=self.out if self.out is not None else (None if self.quick else Path("docs")),
        )


def _child(
    mode: str,
    artifact_dir: Path,
    image_path: Path,
    caption_tokens: int,
    detect_tokens: int,
    prompts: dict,
    threads: int,
) -> ColdStart:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [
        sys.executable,
        "-m",
        "model_build.bench.child",
        mode,
        str(artifact_dir),
        str(image_path),
        str(caption_tokens),
        str(detect_tokens),
        json.dumps(prompts),
        str(threads),
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{mode} cold-start child failed:\n{out.stderr[-3000:]}")
    marks = json.loads(out.stdout.strip().splitlines()[-1])
    return ColdStart.from_child(marks, wall, transformers_imported=mode == "baseline")


def _load_deployed(artifacts: Path) -> tuple[Any, Any]:
    """Both paths as their handlers hold them: the seed recipe's pickle through `torch.load` (as its
    cold-start child loads it), the served one through `handler.florence.artifact.load_artifact`."""
    import torch

    from handler.florence.artifact import load_artifact

    seed = torch.load(artifacts / "baseline" / "model.pt", weights_only=False).eval()
    return seed, load_artifact(artifacts / "served").model


def run_bench(config: BenchConfig) -> BenchResult:
    """Build all paths from one model, time them interleaved, and return every figure as a `BenchResult`."""
    config = config.resolved()
    quick, threads, profile_path = config.quick, config.threads, config.profile
    runs, warmup, cold_runs = int(config.runs or 0), int(config.warmup or 0), int(config.cold_runs or 0)
    caption_tokens, detect_tokens = config.caption_tokens, config.detect_tokens
    import torch
    from tqdm import tqdm

    from handler.florence.engine import Engine
    from handler.florence.memory import reuse_freed_heap
    from model_build.export.quality import teacher_forced_fidelity
    from model_build.export.quantize import quantize_for_serving
    from model_build.export.serving_prep import prepare_for_serving, task_prompt_ids
    from model_build.export.writer import write_artifact

    torch.set_num_threads(threads)
    # The handler keeps freed request buffers in the heap (load_artifact). Set here for the whole
    # process, so the seed recipe's timings get it too: the ratios are conservative.
    reuse_freed_heap()
    build_start = time.perf_counter()
    if quick:
        model, processor = tiny_model_and_processor()
        prompts = task_prompt_ids(processor, IMAGE_SIZE)
        weights = "embedded tiny Florence-2 (quick smoke mode; timings meaningless)"
    else:
        model = base_model()
        processor = decoding_processor()
        prompts = base_prompt_ids()
        weights = "random (Florence-2-base architecture built from config; no pretrained weights offline)"
    params = sum(p.numel() for p in model.parameters())
    baseline = quantize_for_serving(model)
    fast = prepare_for_serving(model, processor, prompt_ids=prompts)
    build_s = time.perf_counter() - build_start

    images = random_images(config.fidelity_images or 1)
    image = images[0]
    tokens = {Task.CAPTION: caption_tokens, Task.DETECT: detect_tokens}
    fidelity = teacher_forced_fidelity(model, baseline, fast, processor, images, prompts, tokens)
    pixel_values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as onnx_dir:
        peers, peer_info = peer_rows(
            model,
            baseline,
            fast,
            pixel_values,
            Task.CAPTION.value,
            threads,
            runs + 6,
            Path(onnx_dir),
            with_ort=config.ort,
        )
    del model
    floor = streaming_floor(fast)

    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp:
        tmp_path = Path(tmp)
        image_path = tmp_path / "image.png"
        image.save(image_path)
        sizes: dict[str, float] = {}
        cold: dict[str, list[ColdStart]] = {"baseline": [], "served": []}
        for label, obj in (("baseline", baseline), ("served", fast)):
            manifest = write_artifact(
                obj,
                processor,
                tmp_path / label,
                base_id="bench",
                image_size=IMAGE_SIZE,
                tasks=list(Task),
            )
            sizes[label] = manifest.model_bytes / 2**20
        # Time both paths as deployed: each loaded from the artifact just written, as its handler
        # loads it (the served one packs every int8 weight in one pass at load; the built object
        # would pack each layer at its first call, between that request's activations).
        del baseline, fast
        gc.collect()
        baseline, fast = _load_deployed(tmp_path)

        engine = Engine(fast, None, new_tokens=tokens)

        def baseline_task(task: Task) -> None:
            baseline_generate(baseline, processor, image, prompts[task.value], tokens[task])

        cases = {
            "caption": (lambda: baseline_task(Task.CAPTION), lambda: engine.run(image, [Task.CAPTION])),
            "detect": (lambda: baseline_task(Task.DETECT), lambda: engine.run(image, [Task.DETECT])),
            # The seed recipe has no shared encoding: an analyze request is one generate per task.
            "caption+detect": (
                lambda: (baseline_task(Task.CAPTION), baseline_task(Task.DETECT)),
                lambda: engine.run(image, [Task.CAPTION, Task.DETECT]),
            ),
        }

        def baseline_vision() -> None:
            with torch.inference_mode():
                baseline.model.get_image_features(pixel_values)

        def fast_vision() -> None:
            with torch.inference_mode():
                fast.image_features(fast.image_spec.to_pixels(image))

        cases["vision tower"] = (baseline_vision, fast_vision)

        samples: dict[str, dict[str, list[float]]] = {name: {"baseline": [], "served": []} for name in cases}
        for name, (baseline_fn, served_fn) in tqdm(cases.items(), desc="latency", unit="case"):
            for _ in range(warmup):
                baseline_fn(), served_fn()
            for _ in range(runs):  # interleaved, so machine noise hits both paths alike
                samples[name]["baseline"].append(time_call(baseline_fn))
                samples[name]["served"].append(time_call(served_fn))

        breakdown = None
        if profile_path is not None:
            from model_build.bench.breakdown import profiler_tables, stage_breakdown

            breakdown = stage_breakdown(baseline, fast, processor, image, prompts)
            tables = profiler_tables(baseline, fast, processor, image, prompts, caption_tokens)
            profile_path.parent.mkdir(parents=True, exist_ok=True)
            profile_path.write_text(
                json.dumps(breakdown, indent=2)
                + "\n\n"
                + "\n\n".join(
                    f"== {name}: one {caption_tokens}-token caption, self CPU time ==\n{table}"
                    for name, table in tables.items()
                )
            )

        baseline = fast = engine = None  # free both models before the cold-start children (closures keep the names)
        for _ in tqdm(range(cold_runs), desc="cold start", unit="run"):
            for label in ("baseline", "served"):
                cold[label].append(
                    _child(label, tmp_path / label, image_path, caption_tokens, detect_tokens, prompts, threads)
                )

    latency = []
    for name, by_path in samples.items():
        baseline_stats, served_stats = Stats.of(by_path["baseline"]), Stats.of(by_path["served"])
        latency.append(LatencyRow(name, baseline_stats, served_stats, baseline_stats.median_s / served_stats.median_s))
    caption_row, detect_row = latency[0], latency[1]
    per_token_ms = (
        # Minimums: on a shared machine contention only ever adds time, so the fastest runs are the cleanest.
        (detect_row.served.min_s - caption_row.served.min_s) / max(1, detect_tokens - caption_tokens) * 1000
    )
    return BenchResult(
        hardware=Hardware(**hardware()),
        threads=threads,
        torch=torch.__version__,
        weights=weights,
        parameters_m=round(params / 1e6, 1),
        image="480x640 random RGB, resized to 384x384",
        caption_tokens=caption_tokens,
        detect_tokens=detect_tokens,
        build_s=build_s,
        latency=latency,
        baseline_cold=min(cold["baseline"], key=lambda c: c.first_caption_s),
        served_cold=min(cold["served"], key=lambda c: c.first_caption_s),
        baseline_artifact_mib=sizes["baseline"],
        served_artifact_mib=sizes["served"],
        fidelity=fidelity,
        peers=peers,
        peer_info=peer_info,
        decode=DecodeFloor(floor, per_token_ms, peers[1].served_s * 1000),
        quick=quick,
        stage_breakdown_ms=breakdown,
    )
