"""Fusion modules: combine per-modality embeddings into one."""

from mmfusion.fusion import cross_attention, early, identity, late  # noqa: F401  (imported for registration)
