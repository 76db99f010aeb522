"""Output folders a command writes whole (an artifact, a model, a dataset): which may be replaced, and how.

A command that replaces its `--out` folder must not delete what it did not write: `fuse --out data`
once wiped the dataset it was pointed at. So such a folder must be new, empty, or one the command
wrote before, which its `marker` file says. The new folder is written beside it and swapped in at the
end, so an interruption or a failure leaves the old folder as it was, never half of the new one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from model_build.settings import UsageError, output_folder

T = TypeVar("T")


def refusal(path: Path, marker: str, what: str) -> str | None:
    """Why a command may not write over `path`, or None: it is new, empty or `what` (holds `marker`, a glob)."""
    if os.path.lexists(path) and not path.is_dir():
        return f"{path} is a file, not a folder"
    if not path.is_dir() or not any(path.iterdir()):
        return None
    if os.path.lexists(path / marker) or any(path.glob(marker)):
        return None
    return f"{path} is not empty and is not {what} (it has no {marker}), which this would overwrite; give a new or empty folder"


def replaceable_folder(marker: str, what: str) -> Callable[[Path], None]:
    """`check` for a folder a command writes over: writable, and new, empty or `what` written before."""

    def check(path: Path) -> None:
        output_folder(path)
        reason = refusal(path, marker, what)
        if reason:
            raise ValueError(reason)

    return check


def write_folder(out: Path, write: Callable[[Path], T], *, marker: str, what: str) -> T:
    """Call `write(folder)` on a fresh folder beside `out`, then swap it in for `out`; return what it returns.

    Until the swap `out` is untouched: a failed or interrupted `write` leaves no trace but its own
    temporary folder, which is removed.
    """
    out = Path(out)
    if out.is_symlink():  # `artifacts/current -> v3`: v3 is replaced, the link keeps pointing at it
        out = out.resolve()
    reason = refusal(out, marker, what)
    if reason:
        raise UsageError(reason)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        result = write(partial)
        if os.path.ismount(out):  # `docker run -v host:/out`: cannot be renamed, so its entries are swapped
            for entry in list(out.iterdir()):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            for entry in list(partial.iterdir()):
                entry.rename(out / entry.name)
        elif out.exists():
            retired = out.parent / f".{out.name}.old-{os.getpid()}"
            shutil.rmtree(retired, ignore_errors=True)
            out.rename(retired)
            partial.rename(out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone once renamed; else what a failure left
    return result
