"""Generated gRPC stubs of proto/mmfusion/v1/inspection.proto (regenerate: python -m mmfusion.proto.generate)."""
