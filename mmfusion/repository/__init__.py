"""The model folder: roots, versions, fitted artifacts, sha256 manifests and export locations."""
