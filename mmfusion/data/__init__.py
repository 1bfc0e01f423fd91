"""Datasets: manifests (CSV with paths relative to the manifest) and what reads them."""
