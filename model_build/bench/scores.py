"""What box and caption scores cost at base size: the scoring work timed alone, and the decode around it.

Scores are made of one softmax per step over the vocabulary (`chosen_token_probabilities`, inside the
greedy loop, which then drops the step's logits), a per-token decode and the token-level parse
(`handler.florence.engine.FastRuntime.parse`). "Without scores" is generate plus the text parser alone;
since the softmax runs inside generate, the end-to-end difference understates the cost, and the
figure that holds is the scoring work timed alone: the same softmaxes over the kept logits of a saved
generation, plus the parse. The target: under 2% of decode time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import partial
from typing import Any

from handler.config import available_cpus
from handler.florence.tasks import MAX_NEW_TOKENS, Task
from model_build.bench.baseline import random_images, time_call
from model_build.settings import setting

OVERHEAD_TARGET_PCT = 2.0


@dataclass
class ScoresBenchConfig:
    """`python -m model_build bench-scores`: size, decode lengths, runs and threads."""

    quick: bool = setting(False, help="the tiny model: a smoke test of the code paths (timings mean nothing)")
    runs: int = setting(7, help="timed runs of each path per task (interleaved)", minimum=1)
    threads: int = setting(
        factory=available_cpus, help="torch threads (default: CPUs available to this process)", minimum=1
    )
    caption_tokens: int = setting(
        MAX_NEW_TOKENS[Task.CAPTION], help="pinned caption length (the served maximum)", minimum=1
    )
    detect_tokens: int = setting(MAX_NEW_TOKENS[Task.DETECT], help="pinned <OD> length (the served maximum)", minimum=1)


def _served_model(quick: bool) -> tuple[Any, str]:
    """The object `prepare_for_serving` builds, from the tiny model or Florence-2-base's architecture."""
    from model_build.bench.baseline import base_model, base_prompt_ids, decoding_processor, tiny_model_and_processor
    from model_build.export.serving_prep import prepare_for_serving

    if quick:
        model, processor = tiny_model_and_processor()
        return prepare_for_serving(model, processor), "embedded tiny Florence-2 (quick; timings meaningless)"
    fast = prepare_for_serving(base_model(), decoding_processor(), prompt_ids=base_prompt_ids())
    return fast, "Florence-2-base architecture, random weights, int8 fast runtime"


def _ms(samples: list[float]) -> dict[str, float]:
    return {"min_ms": round(min(samples) * 1000, 2), "median_ms": round(statistics.median(samples) * 1000, 2)}


def bench_scores(config: ScoresBenchConfig) -> dict[str, Any]:
    import torch

    from handler.florence.engine import FastRuntime
    from handler.florence.runtime.text import chosen_token_probabilities
    from handler.florence.tasks import clean_caption, parse_detections

    torch.set_num_threads(config.threads)
    fast, weights = _served_model(config.quick)
    runtime = FastRuntime(fast)
    encoded = runtime.encode(random_images(1)[0])
    width, height = encoded.size

    def without_scores(task: Task, tokens: int) -> None:
        with torch.inference_mode():
            generation = fast.generate(task.value, encoded.features, tokens, tokens)
        # The parse the service ran before scores: the text alone.
        clean_caption(generation.text) if task is Task.CAPTION else parse_detections(generation.text, width, height)

    def with_scores(task: Task, tokens: int) -> None:
        runtime.predict(encoded, task, tokens, tokens)

    result: dict[str, Any] = {"weights": weights, "threads": config.threads, "runs": config.runs, "tasks": {}}
    for task, tokens in ((Task.CAPTION, config.caption_tokens), (Task.DETECT, config.detect_tokens)):
        with_scores(task, tokens)  # warm-up: packs the int8 head, faults pages in
        without_scores(task, tokens)
        plain_s, scored_s = [], []
        for _ in range(config.runs):
            plain_s.append(time_call(partial(without_scores, task, tokens)))
            scored_s.append(time_call(partial(with_scores, task, tokens)))
        with torch.inference_mode():
            generation = fast.generate(task.value, encoded.features, tokens, tokens, keep_logits=True)
        chosen = torch.tensor(generation.ids[1:])

        def scoring(generation=generation, chosen=chosen, task=task) -> None:
            chosen_token_probabilities(generation.logits, chosen)  # the loop's per-step softmaxes
            runtime.parse(task, generation, encoded.size)

        scoring_s = [time_call(scoring) for _ in range(config.runs * 3)]
        without, served, scoring = _ms(plain_s), _ms(scored_s), _ms(scoring_s)
        result["tasks"][task.api_name] = {
            "new_tokens": len(generation.ids) - 1,
            "decode_without_scores": without,
            "decode_with_scores": served,
            "difference_of_min_pct": round(100 * (served["min_ms"] - without["min_ms"]) / without["min_ms"], 2),
            "scoring_alone": scoring,
            "scoring_share_of_min_pct": round(100 * scoring["min_ms"] / without["min_ms"], 2),
        }
    result["target_pct"] = OVERHEAD_TARGET_PCT
    result["target_met"] = all(t["scoring_share_of_min_pct"] <= OVERHEAD_TARGET_PCT for t in result["tasks"].values())
    return result
