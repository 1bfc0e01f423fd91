"""The image's HEALTHCHECK: exit 0 when serve's gRPC health service says SERVING (overall status "").

Plaintext to 127.0.0.1:$MMFUSION_HEALTH_PORT (default 50051), as kubelet's grpc probe asks; health needs no
credentials. Usage: python healthcheck.py [PORT].
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

port = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MMFUSION_HEALTH_PORT", "50051")
try:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
except grpc.RpcError as error:
    print(f"health: {error.code().name}", file=sys.stderr)
    sys.exit(1)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
print(f"health: {status}")
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
