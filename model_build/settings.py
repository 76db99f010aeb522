"""How a command's configuration dataclass declares its fields, so the CLI can be built from it.

Each command has one configuration dataclass next to the code it configures; its field defaults are
the command's defaults, and the CLI (`model_build.commands.options`) turns its fields into flags.
A field made with `setting(...)` carries the flag's help text; nested dataclasses become argument
groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    positional: bool = False,
    choices: tuple[Any, ...] | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its command-line help. `cli=False` keeps a field out of the CLI."""
    metadata = {"help": help, "flag": flag, "positional": positional, "choices": choices, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
