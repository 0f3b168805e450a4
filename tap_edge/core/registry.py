# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""One registry pattern for devices, proxies and backends (modelled on timm's model registry).

A registry maps a name to an entry; ``register`` is a decorator, ``list(pattern)`` filters names with
shell-style wildcards (``list_devices("stm32*")``), ``get`` raises a one-line user error naming close matches.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tap_edge.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of entries of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")`` (the entry's ``__name__`` when no name is given)."""

        def deco(entry: T) -> T:
            self.add(name or entry.__name__, entry)
            return entry

        return deco

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            plural = self.kind[:-1] + "ies" if self.kind.endswith("y") else self.kind + "s"
            hint = f"did you mean {', '.join(close)}?" if close else f"see the list of {plural}"
            raise UserError(f"unknown {self.kind} '{name}'", hint) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)
