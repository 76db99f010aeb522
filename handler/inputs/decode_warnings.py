"""Python warnings raised while one upload is decoded, counted into its request log line, not printed.

Pillow warns once per bad tag of a TIFF directory, with the tag in the text ("Tag data larger than
file. Skipping tag 40001"), so Python prints every one of them (two stderr lines each): a 62 KB JPEG
whose EXIF block names 5,000 tags wrote 9,998 lines, a 720 KB TIFF naming 60,000 tags 119,998. On
Lambda each is a CloudWatch line the owner pays for, and they bury the request lines.

Only warnings raised by the decoding thread, while it decodes, are taken; the process's filters still
decide which are raised at all, and every other warning reaches the process's own `showwarning`, so
nothing is silenced beyond the decode. C libraries print nothing here: Pillow discards libjpeg's
messages and libtiff's warnings; libtiff's errors (a few lines) come with an image it refuses.

Python remembers each warning text it has shown, per module, so it shows it once; those memories
(`__warningregistry__`) are dropped after a decode that warned. Kept, they grew by 60,000 entries for one
TIFF, for the life of the process, and the same upload sent again logged no warnings.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

MAX_KEPT = 3
"""Distinct warnings quoted in the log line; the rest are only counted."""
MAX_CHARS = 200
"""A quoted warning is cut here: Pillow's texts are short, but some quote the file's own bytes."""


@dataclass
class DecodeWarnings:
    """What one decode warned: how many warnings, and the first few distinct texts."""

    count: int = 0
    first: list[str] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    """The source files that warned: their modules' registries are dropped after the decode."""

    def add(self, message: Warning | str, category: type[Warning], filename: str) -> None:
        self.count += 1
        self.files.add(filename)
        if len(self.first) < MAX_KEPT:
            text = f"{category.__name__}: {message}"[:MAX_CHARS]
            if text not in self.first:
                self.first.append(text)

    def summary(self) -> dict[str, Any] | None:
        """The request log's `decode_warnings` field; None (left out) when the decode was quiet."""
        return {"count": self.count, "first": self.first} if self.count else None


_heard: contextvars.ContextVar[DecodeWarnings | None] = contextvars.ContextVar("decode_warnings", default=None)

ShowWarning = Callable[[Warning | str, type[Warning], str, int, TextIO | None, str | None], None]


class _Router:
    """Stands in for `warnings.showwarning`: a warning of a decoding thread goes to its tally, any other
    to the `showwarning` that was in place before."""

    def __init__(self, shown_before: ShowWarning) -> None:
        self.shown_before = shown_before

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        heard = _heard.get()
        if heard is None:
            self.shown_before(message, category, filename, lineno, file, line)
        else:
            heard.add(message, category, filename)


@contextlib.contextmanager
def heard_while_decoding() -> Iterator[DecodeWarnings]:
    """Collect the warnings this thread raises inside the block; other threads' warnings are untouched.

    Unlike `warnings.catch_warnings`, nothing global is swapped and restored, so concurrent decodes (uvicorn's
    thread pool) cannot restore each other's state. The router is checked on every call, not installed once:
    a `catch_warnings(record=True)` block (pytest's, around each test) resets `showwarning` while it runs.
    """
    if not isinstance(warnings.showwarning, _Router):
        warnings.showwarning = _Router(warnings.showwarning)
    heard = DecodeWarnings()
    token = _heard.set(heard)
    try:
        yield heard
    finally:
        _heard.reset(token)
        if heard.files:
            _forget_shown(heard.files)


def _forget_shown(files: set[str]) -> None:
    """Drop the registries of shown warnings of the modules defined in `files`."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) in files:
            vars(module).pop("__warningregistry__", None)
