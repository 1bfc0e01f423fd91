"""Name -> class registries for encoders, fusions, heads and backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """A mapping of explicit string names to classes; registering a name twice raises."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: register a class under `name`."""

        def add(obj: Any) -> Any:
            if name in self._entries:
                raise KeyError(
                    f"{self.kind} '{name}' is already registered "
                    f"({self._entries[name].__module__}.{self._entries[name].__qualname__})"
                )
            obj.registry_name = name
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


ENCODERS = Registry("encoder")
FUSIONS = Registry("fusion")
HEADS = Registry("head")
BACKENDS = Registry("backend")
