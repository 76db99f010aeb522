"""What the artifact pickles of a runtime module: its weights, never what is built from them after loading."""

from __future__ import annotations

from typing import Any, ClassVar


class CachesNotPickled:
    """Mixin: the attributes named in `caches` (fbgemm's packed weights, a float32 copy, a parsed
    tokenizer) are pickled as None, so the artifact holds each weight once and the cache is rebuilt
    on first use after loading.

    Unpickling sets every cache to None first, so an artifact pickled before a cache was added (same
    format, older runtime) loads with it empty instead of failing on first use.
    """

    caches: ClassVar[tuple[str, ...]] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(dict.fromkeys(self.caches))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # nn.Module, which every user of this mixin also derives from, defines __setstate__.
        super().__setstate__({**dict.fromkeys(self.caches), **state})  # type: ignore[misc]
