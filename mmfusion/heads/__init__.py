"""Task heads: turn a fused Embedding into task outputs."""

from mmfusion.heads import (  # noqa: F401  (imported for registration)
    audio,
    classification,
    embedding,
    multilabel,
    report,
)
from mmfusion.heads.detection import head as detection_head  # noqa: F401
from mmfusion.heads.patchcore import head as patchcore_head  # noqa: F401
