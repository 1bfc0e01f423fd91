"""Anomaly detection from good samples: patch features, coreset memory bank, calibration, maps and boxes."""
