"""Task heads: turn a fused Embedding into task outputs."""

from mmfusion.heads import (  # noqa: F401  (imported for registration)
    anomaly,
    audio,
    classification,
    detection,
    embedding,
    multilabel,
    report,
)
