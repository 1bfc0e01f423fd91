"""How closely one backend's outputs follow torch's: worst relative difference and per-row cosine."""

from __future__ import annotations

import numpy as np

FP32_RELATIVE_TOLERANCE = 1e-4
FP32_MIN_COSINE = 0.9999


def row_cosines(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine of each row pair of two (N, D) arrays, as float64; 1.0 where either row is all zeros."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1)  # (N,)
    return np.where(norms > 0, (expected * got).sum(1) / np.maximum(norms, 1e-30), 1.0)


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    """Worst relative max difference and worst per-row cosine over every float output."""
    worst_relative, worst_cosine = 0.0, 1.0
    for name, expected in reference.items():
        got = np.asarray(candidate[name], dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        if got.shape != expected.shape:
            raise ValueError(f"output {name}: shape {got.shape} differs from torch's {expected.shape}")
        scale = max(float(np.abs(expected).max(initial=0.0)), 1e-12)
        worst_relative = max(worst_relative, float(np.abs(got - expected).max(initial=0.0)) / scale)
        cosine = row_cosines(expected.reshape(len(expected), -1), got.reshape(len(got), -1))  # (B,)
        worst_cosine = min(worst_cosine, float(cosine.min(initial=1.0)))
    return {"max_relative_difference": worst_relative, "min_cosine": worst_cosine}


def within_fp32_parity(parity: dict[str, float]) -> bool:
    """FP32 backends must match torch within 1e-4 relative or a cosine of at least 0.9999."""
    return parity["max_relative_difference"] <= FP32_RELATIVE_TOLERANCE or parity["min_cosine"] >= FP32_MIN_COSINE
