"""The gRPC service: server, servicer (proto <-> types), model manager, scheduler, cache, metrics, streams.

Names are imported lazily, so `import mmfusion.serving.cache` does not pull in the whole server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InspectionServer", "build_server", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mmfusion.serving import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
