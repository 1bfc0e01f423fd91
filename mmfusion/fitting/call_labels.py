"""Fitting the call_labels head from labelled call segments (fused pooled vectors and their label names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmfusion.heads.audio import CallLabelsHead


def fit_call_labels(
    head: CallLabelsHead, pooled: torch.Tensor, labels: list[str], epochs: int = 200, learning_rate: float = 1e-2
) -> float:
    """Fit a call_labels head on fused pooled vectors (N, D) and their label names; returns the final training loss."""
    unknown = sorted(set(labels) - set(head.spec.labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not labels of this head: {head.spec.labels}")
    targets = torch.tensor([head.spec.labels.index(label) for label in labels])  # (N,)
    optimizer = torch.optim.AdamW(head.classifier.parameters(), lr=learning_rate, weight_decay=1e-3)
    head.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = F.cross_entropy(head.classifier(pooled.detach()), targets)
        loss.backward()
        optimizer.step()
    head.eval()
    head.fitted = True
    return float(loss.detach())
