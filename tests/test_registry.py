"""Registry: explicit names, duplicates raise, every built-in part is present."""

import pytest

from mmfusion.parts import load_all
from mmfusion.registry import BACKENDS, ENCODERS, FUSIONS, HEADS, Registry


def test_register_and_get():
    registry = Registry("widget")

    @registry.register("widget.a")
    class A:
        pass

    assert registry.get("widget.a") is A
    assert A.registry_name == "widget.a"
    assert "widget.a" in registry and len(registry) == 1


def test_duplicate_name_raises():
    registry = Registry("widget")
    registry.register("x")(type("First", (), {}))
    with pytest.raises(KeyError, match="'x' is already registered"):
        registry.register("x")(type("Second", (), {}))


def test_unknown_name_lists_registered():
    registry = Registry("widget")
    registry.register("b")(type("B", (), {}))
    registry.register("a")(type("A", (), {}))
    with pytest.raises(KeyError, match="unknown widget 'c'; registered: a, b"):
        registry.get("c")


def test_builtin_parts_registered():
    load_all()
    assert set(ENCODERS.names()) == {
        "image.open_clip",
        "image.efficientnet_lite0",
        "video.frames",
        "speech.whisper",
        "speech.faster_whisper",
        "text.hf",
        "text.open_clip",
        "image.golden_template",
        "image.patch_features",
    }
    assert set(FUSIONS.names()) == {"early", "late", "cross_attention", "identity"}
    assert set(HEADS.names()) == {
        "classification",
        "multilabel",
        "embedding",
        "anomaly.patchcore",
        "detection",
        "call_labels",
        "report",
    }
    assert set(BACKENDS.names()) == {"torch", "onnxruntime", "tensorrt"}
