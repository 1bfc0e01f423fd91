"""Runtime backends: the same model folder on PyTorch, ONNX Runtime or TensorRT."""

from mmfusion.runtime import onnx_backend, tensorrt_backend, torch_backend  # noqa: F401  (imported for registration)
