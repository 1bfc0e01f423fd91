"""GenerateReport on a real gRPC server: a trained cross_modal decoder names the defect; the shipped template model."""

from __future__ import annotations

import json

import cv2
import grpc
import pytest
import yaml

from mmfusion.client import InspectionClient, ServerError
from mmfusion.reports.dataset import load_report_manifest, make_report_suite
from mmfusion.reports.train import train_cross_modal
from mmfusion.repository.folder import models_root
from mmfusion.serving import build_server
from mmfusion.templates.schema import load_template

TEMPLATE = "defect_inspection@1"


def png(image) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def decoder_model(folder):
    folder.mkdir(parents=True)
    config = {
        "name": folder.name,
        "encoders": {"image": {"name": "image.efficientnet_lite0", "params": {"weights": "embedded", "image_size": 64}}},  # noqa: E501
        "fusion": {"name": "identity"},
        "heads": {"report": {"name": "report", "params": {"generator": "cross_modal", "template": TEMPLATE,
                                                          "width": 64, "heads": 4, "max_length": 32}}},
    }  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A repository: a decoder trained on 240 synthetic (part image -> templated report) pairs, and defect-report."""
    root = tmp_path_factory.mktemp("models")
    model = decoder_model(root / "report-decoder")
    data = tmp_path_factory.mktemp("data")
    train = make_report_suite(data / "train", 240, load_template(TEMPLATE), size=64, seed=0)
    make_report_suite(data / "val", 24, load_template(TEMPLATE), size=64, seed=1)
    result = train_cross_modal(model, train, epochs=20)
    assert result.last_loss < result.first_loss / 10
    (root / "defect-report").symlink_to(models_root() / "defect-report")
    (root / "untrained").mkdir()
    (root / "untrained" / "config.yaml").write_text(
        (model / "config.yaml").read_text().replace("report-decoder", "untrained")
    )
    return root, data / "val" / "reports.csv"


@pytest.fixture(scope="module")
def client(root):
    with build_server(["report-decoder", "defect-report", "untrained"], port=0, model_root=root[0]) as server:
        with InspectionClient(f"127.0.0.1:{server.port}", timeout=60) as connected:
            connected.wait_ready(10)
            yield connected


def test_writer_builds_the_generator_once_per_pipeline_with_its_fitted_decoder(root):
    from mmfusion.pipeline import Pipeline
    from mmfusion.reports.writer import ReportWriter

    pipeline = Pipeline(root[0] / "report-decoder")
    try:
        writer = ReportWriter(pipeline, "report")
        assert writer.generator is ReportWriter(pipeline, "report").generator
        assert writer.generator.decoder is not None and writer.template.key == TEMPLATE
        pieces = []
        report = writer.write([load_report_manifest(root[1])[0].read_image()], None, pieces.append)
        assert report.text == "".join(pieces) and report.generator == "cross_modal"
    finally:
        pipeline.close()


@pytest.mark.slow
def test_trained_decoder_names_the_defect_type_through_generate_report(client, root):
    rows = load_report_manifest(root[1])
    right = 0
    for row in rows:
        chunks = list(client.generate_report("report-decoder", images=[png(row.read_image())]))
        *texts, last = chunks
        assert last.final and not any(chunk.final for chunk in texts) and len(texts) >= 5  # streamed word by word
        text = "".join(chunk.text for chunk in texts)
        assert last.fields["text"] == text and last.fields["generator"] == "cross_modal"
        defects = json.loads(last.fields["defects"]) if last.fields["schema_valid"] == "true" else []
        named = defects[0]["type"] if defects else ("none" if last.fields.get("verdict") == "pass" else "?")
        right += named == row.expected["type"]
    assert right / len(rows) >= 0.6  # chance is 0.25 (scratch, spot, crack, none)


def test_shipped_model_answers_with_the_template_generator(client, root):
    image = load_report_manifest(root[1])[0].read_image()
    chunks = list(client.generate_report("defect-report", images=[png(image)], text="a mark near the edge"))
    *texts, last = chunks
    assert last.final and last.fields["schema_valid"] == "true" and last.fields["template"] == TEMPLATE
    assert "".join(chunk.text for chunk in texts) == last.fields["text"]
    fields = json.loads(last.fields["json"])
    assert fields["verdict"] in {"pass", "fail"} and (fields["verdict"] == "fail") == bool(fields["defects"])


def test_untrained_decoder_and_bad_input_are_clear_errors(client):
    with pytest.raises(ServerError, match="report decoder is not trained; run `mmfusion prompts train") as raised:
        list(client.generate_report("untrained", images=[png(_blank())]))
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(ServerError, match=r"images\[0\]") as raised:
        list(client.generate_report("defect-report", images=[b"not an image"]))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


def _blank():
    import numpy as np

    return np.full((64, 64, 3), 128, np.uint8)
