"""The committed gRPC stubs are what grpcio-tools generates from proto/ today."""

from __future__ import annotations

from mmfusion.proto import generate


def test_stubs_are_not_stale(tmp_path):
    fresh = generate.generate(tmp_path)
    assert [path.name for path in fresh] == list(generate.STUBS)
    for path in fresh:
        committed = generate.PACKAGE_DIR / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale against {generate.PROTO_ROOT / generate.PROTO_FILE}; "
            "regenerate with: python -m mmfusion.proto.generate"
        )


def test_stubs_import_from_the_package():
    from mmfusion.proto import inspection_pb2, inspection_pb2_grpc

    assert inspection_pb2.DESCRIPTOR.package == "mmfusion.v1"
    assert inspection_pb2_grpc.InspectionStub.__module__ == "mmfusion.proto.inspection_pb2_grpc"
