"""LoRA fine-tuning of a Florence-2 base on COCO-format captions and boxes, and the adapter's file format.

The adapter is saved as the LoRA tensors only (`get_peft_model_state_dict` + `safetensors.save_file`)
plus peft's `adapter_config.json`. Florence-2 ties `lm_head` to the shared embeddings, which
`save_pretrained` of the whole model trips over; saving only the LoRA tensors never touches the tied
pair, and the base is rebuilt from `--base` when the adapter is loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from handler.florence.artifact import sha256_file
from handler.florence.tasks import IMAGE_SIZE, Task
from model_build.base.loading import check_base, check_image_size
from model_build.settings import UsageError, below_one, output_folder, setting
from model_build.training import TrainConfig

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_INFO = "build_info.json"
MAX_LORA_ALPHA = 2**16
"""Far above any published LoRA setting (alpha = 2r at most ranks); 10^309 and more overflowed `alpha / r`."""


@dataclass
class LoraSettings:
    """The product's LoRA: rank 8 on the language model's attention queries and values (see docs/build.md)."""

    r: int = setting(8, help="LoRA rank", flag="--lora-r", minimum=1)
    alpha: int = setting(
        16,
        help="LoRA alpha (scale = alpha / r; 0 would make the adapter do nothing)",
        flag="--lora-alpha",
        minimum=1,
        maximum=MAX_LORA_ALPHA,
    )
    dropout: float = setting(
        0.05, help="dropout on the LoRA input, below 1", flag="--lora-dropout", check=below_one
    )  # 1 zeroes every input the adapter sees: it would learn nothing
    target_modules: list[str] = setting(
        factory=lambda: ["q_proj", "v_proj"], help="comma-separated module names (language-model attention)"
    )


def _finetune_training() -> TrainConfig:
    # lr 1e-2 is tuned for the tiny base (docs/build.md); 1500 steps reach its plateau on the synthetic set.
    return TrainConfig(steps=1500, batch_size=8, lr=1e-2, warmup_steps=10, log_every=10, checkpoint_every=50)


@dataclass
class FinetuneConfig:
    """`python -m model_build finetune`: every default of a fine-tuning run, in one place."""

    data_dir: Path = setting(Path("data/synth"), help="COCO-format root", flag="--data")
    run_dir: Path = setting(
        Path("runs/finetune"), help="metrics, loss plot, checkpoint and adapter/", check=output_folder
    )
    base: str = setting("tiny", help="`tiny`, a native Florence-2 folder or a hub id", check=check_base)
    train_split: str = setting("train2017", help="images folder / annotation suffix")
    tasks: list[Task] = setting(
        factory=lambda: [Task.CAPTION, Task.DETECT],
        help="comma-separated: caption,detect (both, so neither is forgotten)",
    )
    image_size: int = setting(IMAGE_SIZE, help="square training size = serving size", check=check_image_size)
    max_images: int | None = setting(None, help="use only the first N images per task (default: all)", minimum=1)
    lora: LoraSettings = setting(factory=LoraSettings, help="LoRA")
    train: TrainConfig = setting(factory=_finetune_training, help="optimisation")
    resume: bool = setting(False, help="continue from the run folder's checkpoint")


@dataclass
class AdapterInfo:
    """What the adapter was trained against, so `fuse` and `eval` rebuild the same base and processor."""

    base: str
    image_size: int
    tasks: list[str]
    lora: dict
    adapter_sha256: str


def apply_lora(model, settings: LoraSettings):
    """Wrap the base in a peft model; only the LoRA matrices are trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    return get_peft_model(model, config)


def check_rank(model, settings: LoraSettings) -> None:
    """A UsageError when `--lora-r` is above a target layer's smaller side, before peft allocates the matrices.

    B @ A can have no higher rank than that, so a larger r only adds weights (a huge one fails to allocate).
    Only the loaded base knows its layers; a name matching no layer is left to peft to report.
    """
    import torch

    sides = [
        min(module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and any(name == target or name.endswith("." + target) for target in settings.target_modules)
    ]
    if sides and settings.r > min(sides):
        raise UsageError(
            f"--lora-r {settings.r} is more than the rank a target layer can have on this base ({min(sides)}, "
            "its smaller side): a larger r adds weights, not rank"
        )


def adapter_dir(path: str | Path) -> Path:
    """Accept a run folder or the adapter folder inside it."""
    path = Path(path)
    if (path / ADAPTER_WEIGHTS).is_file():
        return path
    if (path / ADAPTER_DIR / ADAPTER_WEIGHTS).is_file():
        return path / ADAPTER_DIR
    if (path / "config.json").is_file():  # a model folder (a base), not a finetune run
        raise FileNotFoundError(f"{path} holds a model, not a finetune run's adapter; pass it as --base {path}")
    raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {path} or {path / ADAPTER_DIR}; run `finetune` first")


def save_adapter(peft_model, out_dir: str | Path, *, base: str, image_size: int, tasks: list[Task]) -> AdapterInfo:
    """Write the LoRA tensors, peft's adapter config and our build info; return the info (with sha256)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt", "base": base})
    peft_config = peft_model.peft_config["default"]
    peft_config.save_pretrained(str(out))
    info = AdapterInfo(
        base=base,
        image_size=image_size,
        tasks=[t.api_name for t in tasks],
        lora={
            "r": peft_config.r,
            "alpha": peft_config.lora_alpha,
            "dropout": peft_config.lora_dropout,
            "target_modules": sorted(peft_config.target_modules),
        },
        adapter_sha256=sha256_file(out / ADAPTER_WEIGHTS),
    )
    (out / ADAPTER_INFO).write_text(json.dumps(asdict(info), indent=2))
    return info


def read_adapter_info(path: str | Path) -> AdapterInfo:
    folder = adapter_dir(path)
    return AdapterInfo(**json.loads((folder / ADAPTER_INFO).read_text()))


def load_adapter(path: str | Path, base: str | None = None, image_size: int | None = None):
    """Rebuild base + adapter from a run/adapter folder: (peft model in eval mode, processor, info).

    `base` overrides the recorded base, e.g. when the run was trained elsewhere on another path.
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from model_build.base.loading import load_base

    folder = adapter_dir(path)
    info = read_adapter_info(folder)
    model, processor = load_base(base or info.base, image_size or info.image_size)
    peft_model = get_peft_model(model, LoraConfig.from_pretrained(str(folder)))
    result = set_peft_model_state_dict(peft_model, load_file(str(folder / ADAPTER_WEIGHTS)))
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if missing_lora or result.unexpected_keys:  # the flags paired an adapter with a base it was not made for
        raise UsageError(
            f"adapter in {folder} does not fit base {base or info.base!r}: "
            f"missing {missing_lora[:3]}, unexpected {list(result.unexpected_keys)[:3]}"
        )
    peft_model.eval()
    return peft_model, processor, info


def training_samples(config: FinetuneConfig):
    """Caption (COCO style) and `<OD>` samples, optionally limited to the first N images per task."""
    from model_build.data.coco import load_samples

    samples = load_samples(config.data_dir, config.train_split, config.tasks)
    if config.max_images is None:
        return samples
    keep: dict[Task, set[int]] = {}
    limited = []
    for sample in samples:
        ids = keep.setdefault(sample.task, set())
        if sample.image_id in ids or len(ids) < config.max_images:
            ids.add(sample.image_id)
            limited.append(sample)
    return limited


def finetune(config: FinetuneConfig) -> AdapterInfo:
    """Train a LoRA adapter on the base and save it to `<run_dir>/adapter/`; return its info."""
    import torch

    from model_build.base.loading import load_base
    from model_build.data.coco import InputEncoder, check_targets
    from model_build.training import check_run_dir, train

    check_run_dir(config.run_dir, config.resume)  # first: bad data or run folder stop before minutes of loading
    samples = training_samples(config)
    model, processor = load_base(config.base, config.image_size)
    check_targets(samples, processor.tokenizer)  # only the base's tokenizer knows which text it reads as tokens
    check_rank(model, config.lora)
    torch.manual_seed(config.train.seed)  # LoRA A-matrix init, so a resume rebuilds identical names and shapes
    peft_model = apply_lora(model, config.lora)
    positions = getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", None)
    train(
        peft_model,
        samples,
        InputEncoder(processor, max_target_tokens=positions).collate,
        config.train,
        config.run_dir,
        resume=config.resume,
        title=f"LoRA r={config.lora.r} on {config.base}",
    )
    return save_adapter(
        peft_model,
        Path(config.run_dir) / ADAPTER_DIR,
        base=config.base,
        image_size=config.image_size,
        tasks=config.tasks,
    )


def check_adapter(path: Path) -> None:
    """`check` for an adapter flag: the folder's adapter files read, so a missing or corrupt one stops at the
    flag, naming the file, instead of as a JSON or safetensors error after the base has loaded."""
    from safetensors import safe_open

    folder = adapter_dir(path)
    for name in (ADAPTER_CONFIG, ADAPTER_INFO):
        try:
            data = json.loads((folder / name).read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"{folder} has no {name}; rerun `finetune` to write a complete adapter") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{folder / name} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{folder / name} is not a JSON object")
        if name == ADAPTER_INFO:
            try:
                info = AdapterInfo(**data)
            except TypeError as exc:
                raise ValueError(f"{folder / name} is not an adapter's build info: {exc}") from exc
    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="numpy") as weights:
            weights.keys()
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        raise ValueError(f"{folder / ADAPTER_WEIGHTS} is not a readable safetensors file: {exc}") from exc
    if sha256_file(folder / ADAPTER_WEIGHTS) != info.adapter_sha256:  # the manifest would record a wrong sha
        raise ValueError(
            f"{folder / ADAPTER_WEIGHTS} is not the adapter its {ADAPTER_INFO} describes (sha256 differs): "
            "written partly, or copied from another run; rerun `finetune`"
        )
