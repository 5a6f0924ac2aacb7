"""A tiny registry keyed by normalised names; used for architectures, quant types,
schemes, presets and output formats. A failed lookup lists what is registered."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnsupportedError

T = TypeVar("T")


def normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._display: dict[str, str] = {}

    def add(self, name: str, item: T) -> T:
        key = normalise(name)
        if key in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[key] = item
        self._display[key] = name
        return item

    def register(self, *names: str) -> Callable[[T], T]:
        def deco(item: T) -> T:
            for n in names:
                self.add(n, item)
            return item

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[normalise(name)]
        except KeyError:
            raise UnsupportedError(
                f"unknown {self.kind} {name!r}; supported: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise(name) in self._items

    def names(self) -> list[str]:
        return sorted(self._display.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
