"""A run folder survives what happens to long runs: a rerun without --resume, a damaged or mismatched
checkpoint, an interrupted save, a diverging learning rate. Each is one line and a non-zero exit, and
the checkpoint of the earlier run is never lost."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from model_build.cli import main
from model_build.data.synth import synthesize
from model_build.settings import UsageError
from model_build.training import CHECKPOINT_FILE, TrainConfig, TrainingDiverged, train
from tests.conftest import cli_failure


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, last stderr line) of the CLI."""
    status, err = cli_failure(argv, capsys)
    return status, err.strip().splitlines()[-1] if err.strip() else ""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """A 2-step LoRA run on the tiny base, checkpointed at each step, and the argv that made it."""
    root = tmp_path_factory.mktemp("run")
    data = synthesize(root / "data", train=2, val=1, seed=4)
    run = root / "run"
    argv = ["finetune", "--data", str(data), "--run-dir", str(run), "--tasks", "detect", "--batch-size", "1"]
    argv += ["--checkpoint-every", "1", "--steps", "2"]
    assert main(argv) == 0
    return argv, run


def test_a_rerun_without_resume_leaves_the_earlier_checkpoint_alone(finished_run, capsys) -> None:
    argv, run = finished_run
    before = (run / CHECKPOINT_FILE).read_bytes()
    status, line = _fails(argv, capsys)
    assert status == 2
    assert line.endswith(
        f"{run} holds an earlier run's checkpoint.pt; pass --resume to continue it, or give another --run-dir to start over"
    )
    assert (run / CHECKPOINT_FILE).read_bytes() == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora-r", "4"], "was written for another model or other LoRA settings"),
        (["--target-modules", "q_proj,k_proj,v_proj"], "was written for another model or other LoRA settings"),
        (["--steps", "1"], "is at step 2, past --steps 1; give --steps 2 or more"),
    ],
    ids=["lora-r", "target-modules", "fewer-steps"],
)
def test_a_checkpoint_that_does_not_fit_the_resumed_run_is_one_line(finished_run, capsys, flags, message) -> None:
    argv, run = finished_run
    before = (run / CHECKPOINT_FILE).read_bytes()
    status, line = _fails([*argv, "--resume", *flags], capsys)
    assert status == 2 and message in line and str(run / CHECKPOINT_FILE) in line
    assert (run / CHECKPOINT_FILE).read_bytes() == before


def test_a_damaged_checkpoint_is_one_line(finished_run, tmp_path: Path, capsys) -> None:
    argv, run = finished_run
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / CHECKPOINT_FILE).write_bytes((run / CHECKPOINT_FILE).read_bytes()[:3000])  # cut off mid-write
    argv = [*argv[: argv.index("--run-dir") + 1], str(damaged), *argv[argv.index("--run-dir") + 2 :]]
    status, line = _fails([*argv, "--resume"], capsys)
    assert status == 2 and f"{damaged / CHECKPOINT_FILE} cannot be resumed from, it is damaged" in line


class Line(torch.nn.Module):
    """y = w x: a model `train` can drive, whose gradient overflows once w is huge."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=((self.weight * x - labels) ** 4).mean())


def _collate(batch: list[float]) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor(batch), "labels": torch.tensor(batch) * 3}


def test_an_interrupted_checkpoint_save_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    config = TrainConfig(steps=2, batch_size=2, lr=0.1, warmup_steps=0, checkpoint_every=1)
    train(Line(), [1.0, 2.0], _collate, config, tmp_path)
    real_save = torch.save

    def killed_mid_save(obj, path) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_save)
    with pytest.raises(KeyboardInterrupt):
        train(Line(), [1.0, 2.0], _collate, TrainConfig(**{**config.__dict__, "steps": 3}), tmp_path, resume=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)["step"] == 2
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == [CHECKPOINT_FILE]


def test_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(tmp_path: Path) -> None:
    config = TrainConfig(steps=5, batch_size=2, lr=1e30, warmup_steps=0, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"step 2 made the weights NaN or infinite .* holds step 1$"):
        train(Line(), [1.0, 2.0], _collate, config, tmp_path)
    weight = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)["trainable"]["weight"]
    assert math.isfinite(float(weight))


def test_resume_without_a_checkpoint_says_it_starts_over(tmp_path: Path, caplog) -> None:
    config = TrainConfig(steps=1, batch_size=2, warmup_steps=0)
    train(Line(), [1.0, 2.0], _collate, config, tmp_path / "new", resume=True)
    assert "no checkpoint to resume from; starting at step 0" in caplog.text
    with pytest.raises(UsageError, match=r"holds an earlier run's checkpoint\.pt"):
        train(Line(), [1.0, 2.0], _collate, config, tmp_path / "new")


def test_a_warmup_longer_than_the_run_says_the_rate_it_peaks_at(tmp_path: Path, caplog) -> None:
    config = TrainConfig(steps=2, batch_size=2, lr=0.1, warmup_steps=10**29)
    train(Line(), [1.0, 2.0], _collate, config, tmp_path)  # trained at ~0 with no word before
    assert (
        f"--warmup-steps {10**29} is more than --steps 2: the learning rate peaks at 2e-30, not --lr 0.1" in caplog.text
    )
