"""The gRPC service: server, servicer (proto <-> types), model manager, camera streams."""

from mmfusion.serving.server import InspectionServer, build_server, serve

__all__ = ["InspectionServer", "build_server", "serve"]
