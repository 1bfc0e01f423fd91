"""Result cache: results keyed by model@version, input bytes and options; LRU bounded in bytes."""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Payload = bytes | str | Sequence[bytes | str]


def cache_key(model: str, version: int | str, payload: Payload, options: Mapping[str, Any] | None = None) -> str:
    """Hex sha256 over model@version, each input part (length-prefixed) and the options as canonical JSON."""
    digest = hashlib.sha256()
    _feed(digest, f"{model}@{version}".encode())
    parts = [payload] if isinstance(payload, bytes | bytearray | memoryview | str) else list(payload)
    _feed(digest, str(len(parts)).encode())
    for index, part in enumerate(parts):
        if isinstance(part, str):
            _feed(digest, b"s" + part.encode())
        elif isinstance(part, bytes | bytearray | memoryview):
            _feed(digest, b"b" + bytes(part))
        else:
            raise ValueError(f"payload part {index}: {type(part).__name__}: expected bytes or str")
    _feed(digest, _canonical_json(options or {}))
    return digest.hexdigest()


class ResultCache:
    """Thread-safe LRU of results bounded by total bytes; max_bytes=0 disables it.

    Values are returned as stored (not copied): callers must treat them as read-only. None cannot
    be cached, since get() returns None for a miss.
    """

    key = staticmethod(cache_key)

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache max_bytes={max_bytes}: expected >= 0 (0 disables the cache)")
        self.max_bytes = max_bytes
        self._sizeof = sizeof or _pickled_size
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.bytes_used = 0

    @property
    def enabled(self) -> bool:
        """False when max_bytes is 0: nothing is stored and lookups are not counted."""
        return self.max_bytes > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: str) -> Any | None:
        """The cached value (now most recently used) or None; counts a hit or a miss."""
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: str, value: Any) -> bool:
        """Store a value, evicting least recently used entries to fit; False if it was not stored."""
        if not self.enabled or value is None:
            return False
        size = self._sizeof(value)
        with self._lock:
            self._discard(key)
            if size > self.max_bytes:
                return False
            while self.bytes_used + size > self.max_bytes:
                self._discard(next(iter(self._entries)))
            self._entries[key] = (value, size)
            self.bytes_used += size
            return True

    def clear(self) -> None:
        """Drop every entry (the hit and miss counts stay)."""
        with self._lock:
            self._entries.clear()
            self.bytes_used = 0

    def _discard(self, key: str) -> None:
        """Remove one entry if present; caller holds the lock."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes_used -= entry[1]


def _feed(digest: Any, chunk: bytes) -> None:
    """Hash a chunk prefixed by its length, so part boundaries cannot collide."""
    digest.update(len(chunk).to_bytes(8, "big"))
    digest.update(chunk)


def _canonical_json(options: Mapping[str, Any]) -> bytes:
    """Options as JSON with sorted keys and no whitespace: equal options, equal bytes."""
    try:
        return json.dumps(options, sort_keys=True, separators=(",", ":"), default=_json_value).encode()
    except TypeError as error:
        raise ValueError(f"cache options {options!r}: expected JSON-serialisable values ({error})") from None


def _json_value(value: Any) -> Any:
    """JSON form of option values json cannot write natively (bytes, sets, numpy scalars)."""
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _pickled_size(value: Any) -> int:
    """Default size of a value: the length of its pickle."""
    return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
