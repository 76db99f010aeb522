"""Loading a Florence-2 base: the embedded tiny model, a local native-layout folder, or a hub id.

Only the native transformers layout (`Florence2ForConditionalGeneration`) is accepted. The original
`microsoft/Florence-2-*` checkpoints need `trust_remote_code`, which this project never enables.
"""

from __future__ import annotations

import json
from pathlib import Path

from handler.florence.tasks import IMAGE_SIZE, TASK_PROMPTS, VISION_STRIDE, num_image_tokens
from model_build.base.tiny import EMBEDDED_DIR, TINY_BASE_ID

NATIVE_BASE_ID = "florence-community/Florence-2-base"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""What `from_pretrained` reads weights from in a local folder: one of these must be there."""
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
"""What `AutoProcessor` needs beside the weights: one of each (without them it fails after the model loaded)."""


class BaseModelError(ValueError):
    """The `--base` given cannot be loaded as a native Florence-2."""


def _reject_remote_code(base: str, config: dict | None) -> None:
    remote = base.lower().startswith("microsoft/florence-2") or (config is not None and "auto_map" in config)
    if remote:
        raise BaseModelError(
            f"{base!r} is a remote-code Florence-2 checkpoint; this project uses the native transformers "
            f"port instead. Use {NATIVE_BASE_ID!r} (or a local download of it)."
        )


def resolve_base(base: str) -> str:
    """Map `tiny` to the embedded folder; check a local folder is a native Florence-2; pass hub ids on."""
    if base == TINY_BASE_ID:
        if not (EMBEDDED_DIR / "config.json").is_file():
            raise BaseModelError(
                f"embedded tiny model missing at {EMBEDDED_DIR}; build it with `python -m model_build pretrain-tiny`"
            )
        return str(EMBEDDED_DIR)
    path = Path(base)
    if path.exists():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise BaseModelError(f"{base} has no config.json; expected a native Florence-2 folder")
        try:
            config = json.loads(config_file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise BaseModelError(f"{config_file} is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise BaseModelError(f"{config_file} is not a JSON object")
        _reject_remote_code(base, config)
        if config.get("model_type") != "florence2":
            raise BaseModelError(f"{base} holds model_type {config.get('model_type')!r}, not 'florence2'")
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise BaseModelError(f"{base} has a config.json but no weights ({', '.join(WEIGHT_FILES)})")
        for files, what in ((PROCESSOR_FILES, "image processor"), (TOKENIZER_FILES, "tokenizer")):
            if not any((path / name).is_file() for name in files):
                raise BaseModelError(
                    f"{base} has no {what} ({' or '.join(files)}); save the processor beside the model"
                )
        _check_weights_header(path / WEIGHT_FILES[0])
        return str(path)
    _reject_remote_code(base, None)
    if _looks_like_a_path(base):
        raise BaseModelError(f"no such folder {base}; give `tiny`, a native Florence-2 folder or a hub id")
    return base


def _check_weights_header(path: Path) -> None:
    """A `model.safetensors` whose header does not read (cut short, not safetensors) fails here, not mid-load."""
    if not path.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as weights:
            weights.keys()
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        raise BaseModelError(f"{path} is not a readable safetensors file: {exc}") from None


def _looks_like_a_path(base: str) -> bool:
    """A hub id is `namespace/name`; anything else that names no local folder was meant as one."""
    return base.startswith((".", "/", "~")) or base.count("/") > 1 or "\\" in base


def check_base(base: str) -> None:
    """`check` for a `--base` flag: what `resolve_base` refuses stops at the flag, before anything loads."""
    resolve_base(base)


def check_image_size(image_size: int) -> None:
    """`check` for an `--image-size` flag: the vision tower's grid needs whole cells of VISION_STRIDE pixels."""
    if image_size < VISION_STRIDE or image_size % VISION_STRIDE:
        raise ValueError(f"must be a positive multiple of {VISION_STRIDE}, not {image_size}")


def set_image_size(processor, image_size: int = IMAGE_SIZE):
    """Make the processor resize to `image_size` and reserve the matching number of image tokens."""
    image_processor = processor.image_processor
    image_processor.size = {"height": image_size, "width": image_size}
    image_processor.crop_size = {"height": image_size, "width": image_size}
    image_processor.do_center_crop = False
    image_processor.image_seq_length = num_image_tokens(image_size)
    processor.num_image_tokens = num_image_tokens(image_size)
    return processor


def load_processor(base: str, image_size: int = IMAGE_SIZE):
    from transformers import AutoProcessor

    return set_image_size(AutoProcessor.from_pretrained(resolve_base(base)), image_size)


def load_base(base: str, image_size: int = IMAGE_SIZE, dtype=None):
    """Return (model, processor) for `base`, the processor set to `image_size`, the model in fp32 unless `dtype`.

    transformers 5 loads a checkpoint in the dtype it was saved in; the native Florence-2 port is saved in
    fp16, and the build trains, merges and quantizes in fp32.
    """
    import torch
    from transformers import Florence2ForConditionalGeneration

    source = resolve_base(base)
    try:
        model, loading = Florence2ForConditionalGeneration.from_pretrained(
            source, dtype=dtype or torch.float32, output_loading_info=True
        )
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "ignore_mismatched_sizes" in str(exc):
            raise BaseModelError(
                f"could not load {base!r}: weights of other shapes than its config.json says "
                "(transformers' load report above lists them)"
            ) from None
        # Without HF_HUB_OFFLINE, huggingface_hub retries an unreachable hub on a client it already
        # closed and raises RuntimeError; from a local folder any other RuntimeError is a fault to see whole.
        if isinstance(exc, RuntimeError) and Path(source).is_dir():
            raise
        reason = "the hub did not answer" if isinstance(exc, RuntimeError) else str(exc).rstrip(".")
        raise BaseModelError(
            f"could not load {base!r}: {reason}. Offline? Pass a local folder with a native Florence-2 "
            f"(e.g. a download of {NATIVE_BASE_ID}) or `tiny`."
        ) from exc
    missing = loading["missing_keys"]
    if missing:  # transformers would fill them with random values and only warn: a base that is not what it says
        raise BaseModelError(
            f"could not load {base!r}: {len(missing)} weights are missing from its checkpoint "
            f"(e.g. {sorted(missing)[0]}); it is incomplete or for another model"
        )
    processor = load_processor(base, image_size)
    check_positions(model, processor, image_size, base)
    return model, processor


def check_positions(model, processor, image_size: int, base: str) -> None:
    """The text encoder reads the image tokens and a task's prompt; past its positions the first forward
    is an IndexError, so an `--image-size` too large for the base stops here, naming the largest that fits."""
    text_config = getattr(model.config, "text_config", model.config)
    positions = getattr(text_config, "max_position_embeddings", None)
    if positions is None:
        return
    prompt = max(len(processor.tokenizer(text).input_ids) for text in TASK_PROMPTS.values())
    if num_image_tokens(image_size) + prompt <= positions:
        return
    fits = [
        size for size in range(VISION_STRIDE, image_size, VISION_STRIDE) if num_image_tokens(size) + prompt <= positions
    ]
    raise BaseModelError(
        f"--image-size {image_size} gives {num_image_tokens(image_size)} image tokens, which with a {prompt}-token "
        f"prompt are more than the {positions} positions of the text encoder of {base!r}; the largest size that "
        f"fits is {max(fits, default=0)}"
    )
