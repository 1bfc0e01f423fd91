"""Fitting and calibration of heads that learn from data (anomaly memory banks, the golden-template detector)."""
