"""Whether the backends share the cores with other busy threads (a server decoding frames beside its models)."""

from __future__ import annotations

_shared = False


def share_cores(shared: bool = True) -> None:
    """From now on, backends share the cores: their idle intra-op threads sleep instead of spinning.

    Measured (benchmarks/stream_fps.py, 2 cores, 16 streams): onnxruntime on its default threads without
    spinning serves 0.97x the raw backend; on 1 thread (a core kept for decoding) 0.80x.
    """
    global _shared
    _shared = shared


def cores_shared() -> bool:
    """True once a server shares the cores with its decoding threads."""
    return _shared
