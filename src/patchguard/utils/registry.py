"""Named registries whose entries are imported only when used.

Each kind of pluggable piece (evaluation attacks, attack objectives, training attacks,
baselines, data set layouts, presets) has one :class:`Registry`; command-line choices, config
checks and error messages take their names from it. An entry may be given as
``"module:attribute"`` so that listing the names (``patchguard --help``) imports nothing heavy:
the object is imported the first time it is looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name that is not registered (a KeyError for Mapping semantics, a ValueError for
    callers that report bad input)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """One registered name: its target (an object or ``"module:attribute"``), a one-line help
    and traits that can be read without importing the target."""

    target: Any
    help: str = ""
    traits: dict[str, Any] = field(default_factory=dict)


class Registry(Mapping[str, T], Generic[T]):
    """Name -> object, in registration order; lazy ``"module:attribute"`` targets.

    A read-only :class:`~collections.abc.Mapping`: ``list(registry)`` and ``name in registry``
    import nothing, ``registry[name]`` imports the target (an unknown name raises
    :class:`UnknownName`, naming the valid choices).
    """

    def __init__(self, kind: str, entries: Mapping[str, Any] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, T] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: Any, help: str = "", **traits: Any) -> None:
        """Add ``name`` (an :class:`Entry`, an object or ``"module:attribute"``)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = target if isinstance(target, Entry) else Entry(target, help,
                                                                               traits)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order (imports nothing)."""
        return tuple(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry of ``name`` (help and traits; imports nothing)."""
        self._check(name)
        return self._entries[name]

    def trait(self, name: str, key: str, default: Any = None) -> Any:
        """One trait of ``name``'s entry, ``default`` when it has none."""
        return self.entry(name).traits.get(key, default)

    def _check(self, name: str) -> None:
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; available: "
                             f"{', '.join(self._entries)}")

    def __getitem__(self, name: str) -> T:
        self._check(name)
        if name not in self._loaded:
            target = self._entries[name].target
            if isinstance(target, str) and ":" in target:
                module, attribute = target.split(":", 1)
                target = getattr(importlib.import_module(module), attribute)
            self._loaded[name] = target
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
