"""String-keyed registries of the algorithm families (advantages, policy losses, controls).

Each family is one `Registry`: entries are registered with a decorator and looked up by name;
an unknown name raises `UnknownNameError`, whose message lists every valid name. The error is both
a `ValueError` (library code) and a `rlentropy.errors.ConfigError` (so the CLI prints it as one line
and exits 2 when the name came from a config file).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from rlentropy.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, ValueError):
    """A registry lookup with a name that is not registered. The message lists the valid names."""


class Registry(Generic[T]):
    """A name → entry map for one family of algorithms.

    Args:
        family: what the entries are, used in error messages (e.g. "policy loss").
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; registering a taken name raises ValueError."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.family} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def decorator(entry: T) -> T:
            return self.add(name, entry)

        return decorator

    def get(self, name: str) -> T:
        """The entry registered under `name`.

        Raises:
            UnknownNameError: `name` is not registered; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.family} {name!r}; valid names: {valid}") from None

    def names(self) -> tuple[str, ...]:
        """All registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
