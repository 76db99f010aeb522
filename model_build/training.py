"""One training loop for both the tiny base pretraining and LoRA fine-tuning.

Reads top to bottom: shuffle, batch, forward with labels, accumulate, step, log. A run folder gets
`metrics.csv`, `metrics.json`, `loss.png` and `checkpoint.pt` (trainable weights, optimizer, step, rng),
which is enough to resume exactly where it stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from model_build.settings import SEED_BOUNDS, UsageError, setting

CHECKPOINT_FILE = "checkpoint.pt"
DATA_ORDER = ("batch_size", "grad_accum", "seed")
"""The settings a resume replays the data order with: changed, the resumed run sees other batches."""
log = logging.getLogger(__name__)


MAX_LR = 1.0
"""The largest `--lr`: an Adam step moves each weight by about lr, so above 1 a step outweighs the weights it
tunes (and past float32's range, ~3.4e38, torch's step itself overflows)."""


def _a_learning_rate(lr: float) -> None:
    """`check` for --lr: 0 trains nothing (LoRA's B starts at zero, so the adapter would do nothing)."""
    if not 0 < lr <= MAX_LR:
        raise ValueError(f"must be above 0 and at most {MAX_LR:g}, not {lr:g}")


class TrainingDiverged(RuntimeError):
    """An optimizer step made the weights NaN or infinite; the last checkpoint is kept, nothing else is written."""


@dataclass
class TrainConfig:
    """The optimisation settings of one training run; each command sets its own defaults (one place each)."""

    steps: int = setting(200, help="optimizer steps", minimum=1)
    batch_size: int = setting(8, help="samples per micro-batch", minimum=1)
    grad_accum: int = setting(1, help="micro-batches per optimizer step", minimum=1)
    lr: float = setting(1e-3, help=f"peak learning rate, above 0 and at most {MAX_LR:g}", check=_a_learning_rate)
    weight_decay: float = setting(
        0.0, help="AdamW weight decay, at most 1", minimum=0, maximum=1
    )  # each step scales weights by 1 - lr x decay: above 1, with lr up to 1, that flips their signs
    warmup_steps: int = setting(20, help="linear warm-up steps before the cosine decay", minimum=0)
    seed: int = setting(0, help="random seed (batch order, LoRA init, the tiny model's init)", **SEED_BOUNDS)
    log_every: int = setting(10, help="steps between logged figures", minimum=1)
    checkpoint_every: int = setting(100, help="steps between resumable checkpoints", minimum=1)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batches(samples: Sequence, batch_size: int, seed: int):
    """Endless shuffled batches; the order depends only on the seed and the epoch.

    Fewer samples than a batch (a small `--max-images`) make every batch all of them: with whole
    batches only, the loop would never yield and training would hang.
    """
    if not samples:
        raise ValueError("no training samples")
    if len(samples) < batch_size:
        log.warning("only %d training samples: batches of %d instead of %d", len(samples), len(samples), batch_size)
        batch_size = len(samples)
    epoch = 0
    while True:
        order = list(range(len(samples)))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [samples[i] for i in order[start : start + batch_size]]
        epoch += 1


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Stop before any work when a fresh run would overwrite an earlier run's checkpoint.

    Rerunning a long run without `--resume` after an interruption would otherwise replace hours of
    progress with the first checkpoint of a new run.
    """
    checkpoint_path = Path(run_dir) / CHECKPOINT_FILE
    if resume:
        if not checkpoint_path.is_file():
            log.warning("%s: no checkpoint to resume from; starting at step 0", run_dir)
        return
    if os.path.lexists(checkpoint_path):
        raise UsageError(
            f"{run_dir} holds an earlier run's {CHECKPOINT_FILE}; pass --resume to continue it, "
            "or give another --run-dir to start over"
        )


def _read_checkpoint(path: Path, config: TrainConfig) -> dict:
    """The checkpoint a resume starts from, or a UsageError saying why it cannot be used."""
    try:
        checkpoint = torch.load(path, weights_only=False)
        step = int(checkpoint["step"])
        missing = [key for key in ("trainable", "optimizer", "history", "torch_rng") if key not in checkpoint]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
    except Exception as exc:  # a truncated zip, a pickle of something else: torch raises many kinds
        raise UsageError(
            f"{path} cannot be resumed from, it is damaged ({' '.join(str(exc).split())[:200]}); "
            "give another --run-dir to start over"
        ) from None
    if step > config.steps:
        raise UsageError(f"{path} is at step {step}, past --steps {config.steps}; give --steps {step} or more")
    saved = checkpoint.get("config") or {}
    changed = [
        f"{name} {saved[name]} -> {getattr(config, name)}"
        for name in DATA_ORDER
        if name in saved and saved[name] != getattr(config, name)
    ]
    if changed:
        log.warning("%s: resuming with %s; the batches differ from the interrupted run's", path, ", ".join(changed))
    return checkpoint


def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpoint: dict, path: Path) -> None:
    """Load the checkpoint's trainable weights and optimizer state, which must fit this model exactly."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    saved = set(checkpoint["trainable"])
    try:
        if saved != trainable:
            raise ValueError(f"missing {sorted(trainable - saved)[:2]}, unexpected {sorted(saved - trainable)[:2]}")
        model.load_state_dict(checkpoint["trainable"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UsageError(
            f"{path} was written for another model or other LoRA settings (--base, --lora-*, --target-modules) "
            f"than this run's: {' '.join(str(exc).split())[:300]}"
        ) from None


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k in names}


def write_loss_plot(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_metrics(run_dir: Path, history: list[dict], config: TrainConfig, title: str, extra: dict) -> None:
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "lr", "seconds"])
        writer.writeheader()
        writer.writerows(history)
    summary = {"config": asdict(config), "history": history, **extra}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    if history:
        write_loss_plot(history, run_dir / "loss.png", title)


def train(
    model: torch.nn.Module,
    samples: Sequence,
    collate: Callable[[list], dict[str, torch.Tensor]],
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    title: str = "training loss",
) -> list[dict]:
    """Train the model's trainable parameters in place; return the logged loss history.

    `samples` are whatever `collate` turns into a batch of model inputs with `labels`: COCO samples read
    from disk for fine-tuning, in-memory scenes for pretraining.
    """
    if len(samples) < config.batch_size:  # no full batch would ever be drawn: the loop would wait forever
        raise UsageError(
            f"{len(samples)} training samples cannot fill one batch of {config.batch_size}: "
            "give more data (--data, --max-images) or a smaller --batch-size"
        )
    check_run_dir(run_dir, resume)
    if config.warmup_steps > config.steps:  # a run that never reaches its --lr trains less than asked, silently
        log.warning(
            "--warmup-steps %d is more than --steps %d: the learning rate peaks at %.3g, not --lr %g",
            config.warmup_steps,
            config.steps,
            config.lr * config.steps / config.warmup_steps,
            config.lr,
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    start_step = saved_step = 0

    checkpoint_path = run_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.is_file():
        checkpoint = _read_checkpoint(checkpoint_path, config)
        _restore(model, optimizer, checkpoint, checkpoint_path)
        start_step, history = checkpoint["step"], checkpoint["history"]
        saved_step = start_step
        torch.set_rng_state(checkpoint["torch_rng"])
    elif not resume:
        torch.manual_seed(config.seed)

    batches = _batches(samples, config.batch_size, config.seed)
    for _ in range(start_step * config.grad_accum):  # replay the data order so a resume sees the same batches
        next(batches)

    def save_checkpoint(step: int) -> None:
        nonlocal saved_step
        partial = checkpoint_path.with_name(checkpoint_path.name + ".partial")  # an interrupted save keeps the last one
        try:
            torch.save(
                {
                    "trainable": _trainable_state(model),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "history": history,
                    "torch_rng": torch.get_rng_state(),
                    "config": asdict(config),
                },
                partial,
            )
        except BaseException:  # a full disk or Ctrl-C: no half file left beside the last checkpoint
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, checkpoint_path)
        saved_step = step

    started = time.perf_counter()
    running, count = 0.0, 0
    progress = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc=title, unit="step")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        for _ in range(config.grad_accum):
            batch = {k: v.to(device) for k, v in collate(next(batches)).items()}
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = model(**batch).loss / config.grad_accum
            scaler.scale(loss).backward()
            running += loss.item()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        count += 1
        if not all(bool(torch.isfinite(p).all()) for p in params):  # a NaN adapter must never be written
            kept = f"{checkpoint_path} holds step {saved_step}" if saved_step else "no checkpoint was written"
            raise TrainingDiverged(
                f"step {step + 1} made the weights NaN or infinite (loss {running / count:.4g}): training diverged; "
                f"lower --lr. No adapter or model was written; {kept}"
            )
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            entry = {
                "step": step + 1,
                "loss": round(running / count, 5),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - started, 1),
            }
            history.append(entry)
            progress.set_postfix(loss=entry["loss"])
            running, count = 0.0, 0
        if (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(step + 1)
            _write_metrics(run_dir, history, config, title, {})
    save_checkpoint(config.steps)
    _write_metrics(run_dir, history, config, title, {"train_seconds": round(time.perf_counter() - started, 1)})
    model.eval()
    return history
