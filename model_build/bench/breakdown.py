"""Where a caption's time goes: torch.profiler tables and a stage breakdown, seed recipe vs. served.

`python -m model_build bench --profile` writes these into docs/profile_raw.txt; docs/profile.md
summarises them.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return sorted(samples)[len(samples) // 2]


def stage_breakdown(baseline, fast, processor, image, prompts: dict, runs: int = 3) -> dict[str, dict[str, float]]:
    """Median ms of: vision tower, text encoder, one decode step (from a 20-token run; the served step's `lm_head`
    is inside its one C call, so it has no row of its own)."""
    import torch

    from handler.florence.tasks import Task

    prompt = prompts[Task.CAPTION.value]
    pixel_values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    ids = torch.tensor([prompt])
    out: dict[str, dict[str, float]] = {"baseline": {}, "served": {}}
    with torch.inference_mode():
        out["baseline"]["vision_ms"] = _median_ms(lambda: baseline.model.get_image_features(pixel_values), runs)
        image_features = baseline.model.get_image_features(pixel_values).pooler_output
        embeds = baseline.get_input_embeddings()(ids)
        mask = ids == baseline.config.image_token_id
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), image_features)
        encoder = baseline.model.language_model.encoder
        out["baseline"]["text_encoder_ms"] = _median_ms(lambda: encoder(inputs_embeds=embeds), runs)

        def baseline_gen(n: int):
            return lambda: baseline.generate(
                input_ids=ids,
                pixel_values=pixel_values,
                max_new_tokens=n,
                min_new_tokens=n,
                num_beams=1,
                do_sample=False,
            )

        out["baseline"]["per_token_ms"] = (_median_ms(baseline_gen(21), runs) - _median_ms(baseline_gen(1), runs)) / 20

        pixels = fast.image_spec.to_pixels(image)
        out["served"]["preprocess_ms"] = _median_ms(lambda: fast.image_spec.to_pixels(image), runs)
        out["served"]["vision_ms"] = _median_ms(lambda: fast.image_features(pixels), runs)
        features = fast.image_features(pixels)
        inputs = fast.encoder_inputs(Task.CAPTION.value, features)
        out["served"]["text_encoder_ms"] = _median_ms(lambda: fast.text.encode(inputs), runs)

        def fast_gen(n: int):
            return lambda: fast.generate(Task.CAPTION.value, features, n, n)

        out["served"]["per_token_ms"] = (_median_ms(fast_gen(21), runs) - _median_ms(fast_gen(1), runs)) / 20
    return out


def profiler_tables(
    baseline, fast, processor, image, prompts: dict, new_tokens: int = 20, rows: int = 25
) -> dict[str, str]:
    """torch.profiler op tables (self CPU time) for one pinned-length caption on each path."""
    from torch.profiler import ProfilerActivity, profile

    from handler.florence.engine import Engine
    from handler.florence.tasks import Task
    from model_build.bench.baseline import baseline_generate

    engine = Engine(fast, None, new_tokens={Task.CAPTION: new_tokens})
    tables = {}
    runs = {
        "baseline": lambda: baseline_generate(baseline, processor, image, prompts[Task.CAPTION.value], new_tokens),
        "served": lambda: engine.run(image, [Task.CAPTION]),
    }
    for name, fn in runs.items():
        fn()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return tables
