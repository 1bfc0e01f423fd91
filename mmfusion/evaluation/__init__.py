"""Evaluation metrics for inspection outputs (boxes, scores, maps)."""
