"""Side-by-side benchmark: the seed recipe vs. the served fast runtime, at full Florence-2-base size.

The base architecture is built from config with random weights (no hub here), so the figures are
about compute, not answer quality. Each timed request is run with a pinned number of new tokens
(EOS suppressed until then) so both paths do identical work. The seed recipe is: merged model,
int8 `quantize_dynamic`, 384 x 384, greedy HF `generate`, one call per task. The served path is
`handler.florence.engine.Engine.run` on the object `prepare_for_serving` builds, as the handler runs it.
"""

from __future__ import annotations

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
    hardware,
    time_call,
    timing_stats,
    tiny_model_and_processor,
)
from model_build.settings import setting


@dataclass
class BenchConfig:
    """`python -m model_build bench`: run counts, threads, token counts and where the report goes."""

    quick: bool = setting(False, help="tiny model, few runs: a smoke test of the code paths (timings mean nothing)")
    runs: int | None = setting(None, help="timed runs per figure (default: 9, quick 2)")
    warmup: int | None = setting(None, help="untimed runs first (default: 2, quick 1)")
    threads: int = setting(factory=available_cpus, help="torch threads (default: CPUs available to this process)")
    caption_tokens: int = setting(20, help="new tokens per caption, pinned on both paths")
    detect_tokens: int = setting(60, help="new tokens per <OD>, pinned on both paths")
    cold_runs: int | None = setting(None, help="fresh-process cold starts, best kept (default: 3, quick 1)")
    profile: Path | None = setting(None, help="also write a stage breakdown and torch.profiler tables to this file")
    out: Path | None = setting(None, help="folder for benchmarks.{md,json,png} (default: docs/, none with --quick)")

    def resolved(self) -> BenchConfig:
        """The automatic run counts filled in for the chosen mode."""
        return replace(
            self,
            runs=self.runs or (2 if self.quick else 9),
            warmup=self.warmup if self.warmup is not None else (1 if self.quick else 2),
            cold_runs=self.cold_runs or (1 if self.quick else 3),
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
) -> dict:
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
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Build both paths from one model, time them interleaved, and return every figure as a dict."""
    config = config.resolved()
    quick, threads, profile_path = config.quick, config.threads, config.profile
    runs, warmup, cold_runs = int(config.runs or 0), int(config.warmup or 0), int(config.cold_runs or 0)
    caption_tokens, detect_tokens = config.caption_tokens, config.detect_tokens
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from handler.florence.engine import Engine
    from model_build.export.quantize import quantize_for_serving
    from model_build.export.serving_prep import prepare_for_serving, task_prompt_ids
    from model_build.export.writer import write_artifact

    torch.set_num_threads(threads)
    build_start = time.perf_counter()
    if quick:
        model, processor = tiny_model_and_processor()
        prompts = task_prompt_ids(processor, IMAGE_SIZE)
        weights = "embedded tiny Florence-2 (quick smoke mode; timings meaningless)"
    else:
        from model_build.base.tiny import build_processor, build_tokenizer

        model = base_model()
        # The tiny tokenizer only decodes; prompt ids are fixed at the real processor's lengths.
        processor = build_processor(build_tokenizer(["a cat on a mat"]))
        prompts = base_prompt_ids()
        weights = "random (Florence-2-base architecture built from config; no pretrained weights offline)"
    params = sum(p.numel() for p in model.parameters())
    seed = quantize_for_serving(model)
    fast = prepare_for_serving(model, processor, prompt_ids=prompts)
    served_int8 = quantize_for_serving(model, int8_embedding=True)  # what `fast` computes, run through HF
    del model
    build_s = time.perf_counter() - build_start

    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(480, 640, 3) * 255).astype("uint8"))
    tokens = {Task.CAPTION: caption_tokens, Task.DETECT: detect_tokens}
    engine = Engine(fast, None, new_tokens=tokens)

    def seed_task(task: Task) -> None:
        baseline_generate(seed, processor, image, prompts[task.value], tokens[task])

    cases = {
        "caption": (lambda: seed_task(Task.CAPTION), lambda: engine.run(image, [Task.CAPTION])),
        "detect": (lambda: seed_task(Task.DETECT), lambda: engine.run(image, [Task.DETECT])),
        # The seed recipe has no shared encoding: an analyze request is one generate per task.
        "caption+detect": (
            lambda: (seed_task(Task.CAPTION), seed_task(Task.DETECT)),
            lambda: engine.run(image, [Task.CAPTION, Task.DETECT]),
        ),
    }
    pixel_values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]

    def seed_vision() -> None:
        with torch.inference_mode():
            seed.model.get_image_features(pixel_values)

    def fast_vision() -> None:
        with torch.inference_mode():
            fast.image_features(fast.image_spec.to_pixels(image))

    cases["vision tower"] = (seed_vision, fast_vision)

    samples: dict[str, dict[str, list[float]]] = {name: {"seed": [], "served": []} for name in cases}
    for name, (seed_fn, served_fn) in tqdm(cases.items(), desc="latency", unit="case"):
        for _ in range(warmup):
            seed_fn(), served_fn()
        for _ in range(runs):  # interleaved, so machine noise hits both paths alike
            samples[name]["seed"].append(time_call(seed_fn))
            samples[name]["served"].append(time_call(served_fn))

    parity = _parity(seed, fast, processor, image, prompts, tokens)
    exact_parity = _parity(served_int8, fast, processor, image, prompts, tokens)
    del served_int8
    breakdown = None
    if profile_path is not None:
        from model_build.bench.breakdown import profiler_tables, stage_breakdown

        breakdown = stage_breakdown(seed, fast, processor, image, prompts)
        tables = profiler_tables(seed, fast, processor, image, prompts, caption_tokens)
        profile_path.parent.mkdir(parents=True, exist_ok=True)
        profile_path.write_text(
            json.dumps(breakdown, indent=2)
            + "\n\n"
            + "\n\n".join(
                f"== {name}: one {caption_tokens}-token caption, self CPU time ==\n{table}"
                for name, table in tables.items()
            )
        )

    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp:
        tmp_path = Path(tmp)
        image_path = tmp_path / "image.png"
        image.save(image_path)
        sizes, cold = {}, {"seed": [], "served": []}
        for label, obj in (("seed", seed), ("served", fast)):
            manifest = write_artifact(
                obj,
                processor,
                tmp_path / label,
                base_id="bench",
                image_size=IMAGE_SIZE,
                tasks=list(Task),
            )
            sizes[label] = manifest.model_bytes / 2**20
        seed = fast = engine = None  # free both models before the cold-start children (closures keep the names)
        for _ in tqdm(range(cold_runs), desc="cold start", unit="run"):
            for label in ("seed", "served"):
                cold[label].append(
                    _child(label, tmp_path / label, image_path, caption_tokens, detect_tokens, prompts, threads)
                )

    figures = {name: {path: timing_stats(vals) for path, vals in by_path.items()} for name, by_path in samples.items()}
    for by_path in figures.values():
        by_path["speedup"] = by_path["seed"]["median_s"] / by_path["served"]["median_s"]
    best_cold = {label: min(runs_, key=lambda r: r["first_caption_s"]) for label, runs_ in cold.items()}
    return {
        "hardware": hardware(),
        "threads": threads,
        "torch": torch.__version__,
        "weights": weights,
        "parameters_m": round(params / 1e6, 1),
        "image": "480x640 random RGB, resized to 384x384",
        "new_tokens": {"caption": caption_tokens, "detect": detect_tokens},
        "build_s": build_s,
        "latency": figures,
        "cold_start": best_cold,
        "artifact_mib": sizes,
        "parity": parity,
        "parity_same_int8_model": exact_parity,
        "stage_breakdown_ms": breakdown,
        "quick": quick,
    }


def _parity(seed, fast, processor, image, prompts: dict, tokens: dict[Task, int]) -> dict[str, Any]:
    """Seed (plain int8 HF) vs served on the same input: greedy ids, and logits along the seed's path.

    Logits are compared teacher-forced (the served decoder is fed the seed's tokens), so one flipped
    near-tie does not turn every later step into a comparison of different prefixes. Where the free
    greedy ids diverge, the seed's own top-1/top-2 margin at that step shows how close the tie was.
    """
    import torch

    pixel_values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    result = {}
    with torch.inference_mode():
        features = fast.image_features(fast.image_spec.to_pixels(image))
        for task in Task:
            ids = torch.tensor([prompts[task.value]])
            ref = seed.generate(
                input_ids=ids,
                pixel_values=pixel_values,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens[task],
                min_new_tokens=tokens[task],
                num_beams=1,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            ref_ids = ref.sequences[0].tolist()
            ref_logits = torch.stack(ref.logits)[:, 0]
            ours = fast.generate(task.value, features, tokens[task], tokens[task])
            memory = fast.text.encode(fast.encoder_inputs(task.value, features))
            spec = fast.decode_spec
            _, forced_logits = fast.text.greedy(
                memory, spec.start_id, spec.eos_id, tokens[task], tokens[task], spec.forced_eos, teacher=ref_ids[1:]
            )
            steps = min(len(ref_logits), len(forced_logits))
            diff = (ref_logits[:steps] - forced_logits[:steps]).abs().max().item()
            # Compare choices as greedy makes them: EOS is suppressed while the length is pinned.
            ref_choice, our_choice = ref_logits[:steps].clone(), forced_logits[:steps].clone()
            ref_choice[:, spec.eos_id] = our_choice[:, spec.eos_id] = float("-inf")
            top1 = (ref_choice.argmax(-1) == our_choice.argmax(-1))[: steps - 1].float().mean().item()
            divergence = next((i for i, (a, b) in enumerate(zip(ref_ids, ours.ids, strict=False)) if a != b), None)
            margin = None
            if divergence is not None:
                top2 = ref_choice[divergence - 1].topk(2).values
                margin = (top2[0] - top2[1]).item()
            result[task.api_name] = {
                "identical_ids": ref_ids == ours.ids,
                "first_divergence": divergence,
                "seed_top2_margin_at_divergence": margin,
                "teacher_forced_top1_agreement": top1,
                "max_abs_logit_diff": diff,
                "max_abs_logit": ref_logits.abs().max().item(),
            }
    return result
