"""Frames are decoded and image-preprocessed on the calling threads; the model's thread only runs the backend."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from mmfusion.client import InspectionClient, frames_from_images
from mmfusion.pipeline import Pipeline, Ready, _joined
from mmfusion.runtime import threads
from mmfusion.serving import build_server
from mmfusion.types import InputError, Inputs, Modality
from tests.conftest import random_image
from tests.serving.test_server import png
from tests.test_pipeline import BLUE, RED, tiny_model


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    return root


@pytest.fixture(scope="module")
def pipeline(model_root) -> Pipeline:
    return Pipeline(model_root / "tiny")


def image_preprocess_threads(monkeypatch, pipeline: Pipeline) -> list[str]:
    """The names of the threads that run the image encoder's preprocessing from now on."""
    encoder, seen = pipeline.encoder(Modality.IMAGE), []
    original = encoder.preprocess

    def recording(items):
        seen.append(threading.current_thread().name)
        return original(items)

    monkeypatch.setattr(encoder, "preprocess", recording)
    return seen


def test_ready_items_predict_exactly_as_raw_inputs(pipeline):
    items = [
        Inputs(image=png(RED)),
        Inputs(image=png(BLUE), text="a blue part"),
        Inputs(text="no image"),
        Inputs(image=random_image(1, 80, 40)),  # another size: the same (1, 3, S, S) arrays
    ]
    ready = [pipeline.ready(item) for item in items]
    assert [sorted(m.value for m in r.arrays) for r in ready] == [["image"], ["image"], [], ["image"]]
    assert ready[0].arrays[Modality.IMAGE]["pixels"].shape[0] == 1
    expected, got = pipeline.predict_batch(items), pipeline.predict_batch(ready)
    for want, have in zip(expected, got):
        assert (want.modalities, want.outputs) == (have.modalities, have.outputs)


def test_predict_batch_on_ready_items_leaves_image_preprocessing_alone(pipeline, monkeypatch):
    ready = [pipeline.ready(Inputs(image=png(image))) for image in (RED, BLUE, RED)]
    seen = image_preprocess_threads(monkeypatch, pipeline)
    labels = [p.outputs["colour"]["label"] for p in pipeline.predict_batch(ready)]
    assert labels == ["red", "blue", "red"] and seen == []
    pipeline.predict_batch([Inputs(image=png(RED))])  # plain Inputs: preprocessed by predict_batch, as before
    assert len(seen) == 1


def test_arrays_that_do_not_line_up_are_preprocessed_again():
    one = {"pixels": np.zeros((1, 3, 8, 8), np.float32)}
    assert _joined([one, one])["pixels"].shape == (2, 3, 8, 8)
    assert _joined([one, {"pixels": np.zeros((1, 3, 8, 16), np.float32)}]) is None  # e.g. padded to its own size
    assert _joined([one, None]) is None and _joined([]) is None


def test_an_item_whose_early_preprocessing_fails_fails_in_predict_batch_as_before(pipeline, monkeypatch):
    encoder = pipeline.encoder(Modality.IMAGE)
    original = encoder.preprocess

    def refuse_blue(items):
        if any(np.array_equal(item, BLUE) for item in items):
            raise InputError("image[0]: refused")
        return original(items)

    monkeypatch.setattr(encoder, "preprocess", refuse_blue)
    good, bad = pipeline.ready(Inputs(image=RED)), pipeline.ready(Inputs(image=BLUE))
    assert isinstance(bad, Ready) and bad.arrays == {}
    with pytest.raises(InputError, match="refused"):
        pipeline.predict_batch([good, bad])
    assert pipeline.predict_batch([good])[0].outputs["colour"]["label"] == "red"


def test_a_stream_decodes_on_its_own_thread_not_the_models(model_root, monkeypatch):
    with build_server(["tiny"], port=0, model_root=model_root, max_batch_size=4) as running:
        entry = running.models.get("tiny")
        seen = image_preprocess_threads(monkeypatch, entry.pipeline)
        with InspectionClient(f"127.0.0.1:{running.port}", timeout=30) as client:
            answers = list(client.stream(frames_from_images([png(RED), png(BLUE)] * 3, "cam", "tiny")))
            client.inspect("tiny", image=png(BLUE))
    answered = [a.sequence_number for a in answers] + [n for a in answers for n in a.skipped_sequence_numbers]
    assert sorted(answered) == list(range(6)) and not any(a.HasField("error") for a in answers)
    assert len(seen) == 7 and not any(name.startswith("scheduler-") for name in seen), seen  # 6 frames, 1 Inspect


def test_onnxruntime_stops_spinning_once_a_server_shares_the_cores(monkeypatch):
    from mmfusion.config import RuntimeSpec
    from mmfusion.runtime.onnx_backend import session_options

    monkeypatch.setattr(threads, "_shared", False)
    with pytest.raises(RuntimeError):  # not set: onnxruntime's default (spinning)
        session_options(RuntimeSpec(backend="onnxruntime")).get_session_config_entry("session.intra_op.allow_spinning")
    threads.share_cores()
    options = session_options(RuntimeSpec(backend="onnxruntime", threads=3))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 3  # the runtime block's threads still hold
