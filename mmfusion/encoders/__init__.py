"""Encoders: thin adapters that turn one modality into an Embedding."""

from mmfusion.encoders import (  # noqa: F401  (imported for registration)
    image_efficientnet,
    image_golden_template,
    image_open_clip,
    image_patches,
    speech_faster_whisper,
    speech_whisper,
    text_hf,
    text_open_clip,
    video,
)
