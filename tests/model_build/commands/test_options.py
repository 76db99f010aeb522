"""The CLI is built from each command's configuration dataclass: one source of defaults, every field settable."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from handler.florence.tasks import Task
from model_build.bench.cost import CostConfig
from model_build.bench.quality import QualityConfig
from model_build.bench.run import BenchConfig
from model_build.bench.scores import ScoresBenchConfig
from model_build.cli import COMMANDS, build_parser
from model_build.commands.options import config_from
from model_build.data.synth import SynthConfig
from model_build.demo import DemoConfig
from model_build.evaluate import EvalConfig
from model_build.export.fuse import FuseConfig
from model_build.finetune.lora import FinetuneConfig
from model_build.pretrain.pretraining import PretrainConfig
from model_build.rehearsal.pipeline import RehearsalConfig

CONFIGS = {
    "finetune": FinetuneConfig,
    "fuse": FuseConfig,
    "eval": EvalConfig,
    "pretrain-tiny": PretrainConfig,
    "demo": DemoConfig,
    "bench": BenchConfig,
    "cost": CostConfig,
    "bench-scores": ScoresBenchConfig,
    "quality": QualityConfig,
    "synth": SynthConfig,
    "rehearse": RehearsalConfig,
}


def _parse(command: str, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *argv])


REQUIRED = {"cost": (["--measured", "1769=bench.json"], {"measured": ["1769=bench.json"]})}
"""The flags a command cannot run without, and the fields they set."""


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_no_flags_gives_the_dataclass_defaults(command: str) -> None:
    required_flags, required_fields = REQUIRED.get(command, ([], {}))
    defaults = CONFIGS[command]()
    assert config_from(_parse(command, *required_flags), defaults) == dataclasses.replace(defaults, **required_fields)


def test_finetune_defaults_are_finetunes_own_not_the_generic_train_config() -> None:
    config = config_from(_parse("finetune"), FinetuneConfig())
    assert (config.train.steps, config.train.lr) == (1500, 1e-2)
    assert config.lora.r == 8 and config.lora.target_modules == ["q_proj", "v_proj"]


def test_flags_reach_nested_fields_and_parse_their_types() -> None:
    args = _parse(
        "finetune", "--steps", "7", "--lr", "0.5", "--lora-r", "4", "--target-modules", "q_proj,k_proj",
        "--tasks", "detect", "--data", "somewhere", "--resume", "--max-images", "3",
    )  # fmt: skip
    config = config_from(args, FinetuneConfig())
    assert config.train.steps == 7 and config.train.lr == 0.5
    assert config.lora.r == 4 and config.lora.target_modules == ["q_proj", "k_proj"]
    assert config.tasks == [Task.DETECT] and config.data_dir == Path("somewhere")
    assert config.resume is True and config.max_images == 3


def test_eval_takes_the_model_folder_positionally(tiny_artifact: Path) -> None:
    config = config_from(_parse("eval", str(tiny_artifact), "--tasks", "caption"), EvalConfig())
    assert config.model == tiny_artifact and config.tasks == (Task.CAPTION,)


def test_a_bad_task_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse("fuse", "--tasks", "segment")
    assert exit_info.value.code == 2
    assert "unknown task 'segment'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_field_with_help_has_a_flag(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    dests = {action.dest for action in sub._actions}
    config_type = CONFIGS[command]
    for field in dataclasses.fields(config_type):
        value = getattr(config_type(), field.name)
        if dataclasses.is_dataclass(value):
            assert {f"{field.name}.{f.name}" for f in dataclasses.fields(value)} <= dests
        else:
            assert field.name in dests, field.name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_names_its_default_once(command: str) -> None:
    """A help text that describes its own default (`CPUs available to this process`) got a second one appended:
    `(default: CPUs available to this process) (default: 2)`, the second true on this machine only."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.help and action.dest != "help":
            assert action.help.count("(default:") <= 1, f"{command} {action.option_strings}: {action.help}"
            assert "(default: )" not in action.help, (
                f"{command} {action.option_strings}: an empty default shows nothing"
            )
