"""Inspect results in the result cache: keyed by model@version and the request's bytes, stored without timings."""

from __future__ import annotations

import time

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.cache import ResultCache
from mmfusion.serving.dispatch import milliseconds
from mmfusion.serving.metrics import ServiceMetrics
from mmfusion.serving.models import ModelEntry


class InspectCache:
    """Looks Inspect requests up in a ResultCache (hits and misses counted) and stores their results."""

    def __init__(self, cache: ResultCache, metrics: ServiceMetrics, no_cache_models: frozenset[str]) -> None:
        self.cache = cache
        self.metrics = metrics
        self.no_cache_models = no_cache_models

    def key(self, entry: ModelEntry, request: pb.InspectRequest) -> str | None:
        """model@version + sha256 of the whole request (every input byte and option); None when not cached."""
        if not self.cache.enabled or entry.name in self.no_cache_models:
            return None
        return self.cache.key(entry.name, entry.version, request.SerializeToString(deterministic=True))

    def get(self, entry: ModelEntry, key: str, received: float) -> pb.InspectionResult | None:
        """The cached result with timings of this lookup only; None on a miss."""
        cached = self.cache.get(key)
        self.metrics.record_cache(entry.name, hit=cached is not None)
        if cached is None:
            return None
        result = pb.InspectionResult.FromString(cached)
        elapsed = milliseconds(received, time.monotonic())
        result.timings.CopyFrom(pb.Timings(decode_ms=elapsed, total_ms=elapsed))
        return result

    def put(self, key: str, result: pb.InspectionResult) -> None:
        """Store a result without its timings (they belong to the call that computed it)."""
        stored = pb.InspectionResult()
        stored.CopyFrom(result)
        stored.ClearField("timings")
        self.cache.put(key, stored.SerializeToString(deterministic=True))
