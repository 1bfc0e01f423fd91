"""PatchCore anomaly head: patch features in the graph; memory bank, coreset, calibration, maps and boxes outside it."""
