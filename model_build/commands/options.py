"""Command-line flags built from a command's configuration dataclass, and the dataclass built back.

The dataclass is the one source of defaults: a flag's default is the field's, read from a default
instance (so nested defaults such as fine-tuning's own `TrainConfig` are honoured), and its help
text ends with that default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from handler.florence.tasks import Task, tasks_from

T = TypeVar("T")


def _task_list(text: str) -> list[Task]:
    """A `--tasks` value; an empty one names no task, which no command can run (the API reads it as its default)."""
    try:
        tasks = tasks_from(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not tasks:
        raise argparse.ArgumentTypeError(
            f"name at least one task ({', '.join(t.api_name for t in Task)}), not {text!r}"
        )
    return tasks


def _finite_float(text: str) -> float:
    """A float flag's value: `nan` and `inf` parse as floats but pass every bound and break training."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


_finite_float.__name__ = "float"  # argparse names it in "invalid float value"


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser_for(hint: Any) -> tuple[Any, bool]:
    """(argparse type, whether None is allowed) for a field's type hint."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        inner = args[0]
        convert = _task_list if inner is Task else _name_list
        return (convert if origin is list else lambda text: tuple(convert(text))), optional
    if hint is Path:
        return Path, optional
    if hint is float:
        return _finite_float, optional
    if hint in (int, str):
        return hint, optional
    raise TypeError(f"no command-line form for {hint!r}")


def _checked(convert: Any, minimum: float | None, maximum: float | None, check: Any) -> Any:
    """`convert`, then the field's bound and check; a failure is argparse's usage error naming the flag."""

    def parse(text: str) -> Any:
        value = convert(text)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g}, not {text}")
        if check is not None:
            try:
                check(value)
            except (ValueError, OSError) as exc:
                raise argparse.ArgumentTypeError(" ".join(str(exc).split())) from exc
        return value

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid int value"
    return parse


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = ",".join(v.api_name if isinstance(v, Task) else str(v) for v in value)
    return str(value) or "''"  # an empty default shown as written on a command line, not as nothing


def add_config_arguments(parser: argparse.ArgumentParser, defaults: Any, *, prefix: str = "") -> None:
    """Add one flag per field of the dataclass instance `defaults` (nested dataclasses become groups)."""
    hints = typing.get_type_hints(type(defaults))
    for field in dataclasses.fields(defaults):
        meta = field.metadata
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(value):
            group = parser.add_argument_group(meta.get("help") or field.name)
            add_config_arguments(group, value, prefix=f"{prefix}{field.name}.")  # type: ignore[arg-type]
            continue
        if meta.get("cli") is False or "help" not in meta:
            continue
        dest = f"{prefix}{field.name}"
        help_text = meta["help"]
        says_its_default = "(default:" in help_text  # a computed default, described better than its value here
        if hints[field.name] is bool:
            parser.add_argument(
                meta.get("flag") or "--" + field.name.replace("_", "-"),
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=value,
                help=help_text if says_its_default else f"{help_text} (default: {'on' if value else 'off'})",
            )
            continue
        convert, _ = _parser_for(hints[field.name])
        if any(meta.get(key) is not None for key in ("minimum", "maximum", "check")):
            convert = _checked(convert, meta.get("minimum"), meta.get("maximum"), meta.get("check"))
        if says_its_default or meta.get("required"):
            pass
        elif value is not None:
            help_text += f" (default: {_shown(value)})"
        elif "default" not in help_text:
            help_text += " (default: none)"
        kwargs: dict[str, Any] = {"type": convert, "default": value, "help": help_text, "metavar": field.name.upper()}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("required") and not meta.get("positional"):
            kwargs["required"] = True
        if meta.get("positional"):
            parser.add_argument(dest, nargs="?", **kwargs)
        else:
            parser.add_argument(meta.get("flag") or "--" + field.name.replace("_", "-"), dest=dest, **kwargs)


def config_from(args: argparse.Namespace, defaults: T, *, prefix: str = "") -> T:
    """The dataclass `defaults` with every field the command line set."""
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(defaults):  # type: ignore[arg-type]
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(value):
            changes[field.name] = config_from(args, value, prefix=f"{prefix}{field.name}.")
        elif hasattr(args, f"{prefix}{field.name}"):
            changes[field.name] = getattr(args, f"{prefix}{field.name}")
    return dataclasses.replace(defaults, **changes)  # type: ignore[type-var]
