"""Regenerate the gRPC stubs from proto/ with grpcio-tools and make their imports package-relative."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parent.parent / "proto"
PROTO_FILE = "mmfusion/v1/inspection.proto"
STUBS = ("inspection_pb2.py", "inspection_pb2.pyi", "inspection_pb2_grpc.py")


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Write the stubs of inspection.proto flat into out_dir; return their paths."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as raw_dir:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"-I{well_known}",
                f"--python_out={raw_dir}",
                f"--pyi_out={raw_dir}",
                f"--grpc_python_out={raw_dir}",
                str(proto_root / PROTO_FILE),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {proto_root / PROTO_FILE} (exit {status})")
        generated = Path(raw_dir) / Path(PROTO_FILE).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in STUBS:
            text = (generated / name).read_text()
            # protoc writes imports rooted at the proto path (mmfusion.v1); the stubs live in mmfusion.proto
            text = text.replace("from mmfusion.v1 import inspection_pb2", "from mmfusion.proto import inspection_pb2")
            (out_dir / name).write_text(text)
            written.append(out_dir / name)
    return written


if __name__ == "__main__":
    for path in generate(PACKAGE_DIR if len(sys.argv) < 2 else Path(sys.argv[1])):
        print(path)
