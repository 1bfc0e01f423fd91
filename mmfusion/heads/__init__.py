"""Task heads: turn a fused Embedding into task outputs."""

from mmfusion.heads import classification, embedding, multilabel  # noqa: F401  (imported for registration)
