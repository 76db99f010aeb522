"""How a command's configuration dataclass declares its fields, so the CLI can be built from it.

Each command has one configuration dataclass next to the code it configures; its field defaults are
the command's defaults, and the CLI (`model_build.commands.options`) turns its fields into flags.
A field made with `setting(...)` carries the flag's help text and what a given value must satisfy
(`minimum`, `check`), so a bad value stops at the flag, before any model is loaded; nested
dataclasses become argument groups.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEED_BOUNDS: dict[str, float] = {"minimum": -(2**63), "maximum": 2**63 - 1}
"""A seed flag's range: what `torch.manual_seed` takes (larger is an overflow traceback)."""


def below_one(share: float) -> None:
    """`check` for a share or probability that must leave something over: at least 0 and below 1."""
    if not 0 <= share < 1:
        raise ValueError(f"must be at least 0 and below 1, not {share:g}")


class UsageError(ValueError):
    """The command line asks for something that cannot run; the CLI answers it as a usage error (exit 2)."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    positional: bool = False,
    choices: tuple[Any, ...] | None = None,
    cli: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
    check: Callable[[Any], object] | None = None,
    required: bool = False,
) -> Any:
    """A dataclass field with its command-line help. `cli=False` keeps a field out of the CLI.

    `minimum` and `maximum` bound a number given on the command line; `check` is called with a given value and
    raises ValueError (or OSError) saying what is wrong with it; `required` makes the flag mandatory.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "positional": positional,
        "choices": choices,
        "cli": cli,
        "minimum": minimum,
        "maximum": maximum,
        "check": check,
        "required": required,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_under(path: Path) -> None:
    """The folders that writing `path` would create can be created: the nearest existing one is a writable folder."""
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise ValueError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {existing} is not writable")


def output_folder(path: Path) -> None:
    """`check` for a folder a command writes into (created if missing)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; give a folder")
    _writable_under(path / "x")


def output_file(path: Path) -> None:
    """`check` for a file a command writes (its folders created if missing)."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name")
    _writable_under(path)
