"""Model integrity: a sha256 manifest of a model folder's files, and torch loading of tensors only."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from mmfusion.security.crypto import atomic_write

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
WEIGHT_SUFFIXES = frozenset(
    {".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx", ".engine", ".plan", ".pkl", ".pickle", ".npz", ".npy"}
)
_CHUNK = 1024 * 1024


class IntegrityError(ValueError):
    """A model file that does not match its manifest or cannot be loaded safely; the message names it."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("mmfusion", "torch", "onnx", "onnxruntime", "tensorrt"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _relative(folder: Path, name: str | Path) -> str:
    """`name` as a POSIX path inside `folder`; anything that escapes it raises IntegrityError."""
    candidate = Path(name)
    resolved = (candidate if candidate.is_absolute() else folder / candidate).resolve()
    try:
        return resolved.relative_to(folder.resolve()).as_posix()
    except ValueError:
        raise IntegrityError(f"manifest file {str(name)!r} is outside the model folder {str(folder)!r}") from None


def _default_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    )


def write_manifest(folder: str | Path, files: list[str | Path] | None = None) -> Path:
    """Write folder/manifest.json with sha256 and size of `files` (default: every file in the folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IntegrityError(f"model folder {str(folder)!r} does not exist")
    names = sorted({_relative(folder, name) for name in files}) if files is not None else _default_files(folder)
    entries: dict[str, dict[str, Any]] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"cannot add {name!r} to the manifest: no such file in {str(folder)!r}")
        entries[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return _write_entries(folder, entries)


def _write_entries(folder: Path, entries: dict[str, dict[str, Any]]) -> Path:
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tools": _tool_versions(),
        "files": entries,
    }
    destination = folder / MANIFEST_NAME
    atomic_write(destination, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
    return destination


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntegrityError(
            f"{str(path)!r} does not exist; create it with `mmfusion manifest write {folder}`"
        ) from None
    except ValueError as error:
        raise IntegrityError(f"{str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{str(path)!r}: expected a manifest of format {MANIFEST_FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise IntegrityError(f"{str(path)!r}: expected format {MANIFEST_FORMAT} with a 'files' mapping")
    return files


def _check_size(name: str, entry: dict[str, Any], size: int) -> None:
    if size != entry.get("size"):
        raise IntegrityError(f"model file {name!r} is {size} bytes; {MANIFEST_NAME} says {entry.get('size')}")


def _check_sha256(name: str, entry: dict[str, Any], digest: str) -> None:
    if digest != entry.get("sha256"):
        raise IntegrityError(f"model file {name!r} does not match its sha256 in {MANIFEST_NAME} (changed?)")


@dataclass(frozen=True)
class VerifiedFolder:
    """A model folder and its manifest, read once: what `read_model_file` checks the bytes it reads against."""

    folder: Path
    files: dict[str, dict[str, Any]]

    def name_of(self, path: Path) -> str | None:
        """The manifest name of an absolute path inside the folder (as given, else links resolved); None outside."""
        for root, candidate in ((Path(os.path.abspath(self.folder)), path), (self.folder.resolve(), path.resolve())):
            if candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix()
        return None

    def check(self, name: str, data: bytes) -> None:
        """Raise IntegrityError unless `data` is the content the manifest lists for `name`."""
        entry = self.files.get(name)
        if entry is None:
            raise IntegrityError(
                f"model file {name!r} is not listed in {str(self.folder / MANIFEST_NAME)!r}; check it and rewrite "
                f"the manifest with `mmfusion manifest write {self.folder}`"
            )
        _check_size(name, entry, len(data))
        _check_sha256(name, entry, hashlib.sha256(data).hexdigest())


_LOADING: ContextVar[tuple[VerifiedFolder, ...]] = ContextVar("mmfusion_verified_folders", default=())


@contextmanager
def verified_reads(verified: VerifiedFolder | None) -> Iterator[VerifiedFolder | None]:
    """While open (in this thread or task), `read_model_file` checks every file of the folder against its manifest.

    None (a folder without a manifest) changes nothing.
    """
    token = _LOADING.set((*_LOADING.get(), verified) if verified is not None else _LOADING.get())
    try:
        yield verified
    finally:
        _LOADING.reset(token)


def read_model_file(path: str | Path) -> bytes:
    """A file's bytes; inside a folder opened with `verified_reads`, checked against its manifest as read.

    The bytes returned are the bytes hashed, so a file changed after the folder was verified is refused
    rather than loaded. A missing file raises FileNotFoundError, a mismatch IntegrityError.
    """
    absolute = Path(os.path.abspath(path))
    with open(absolute, "rb") as handle:
        data = handle.read()
    for verified in reversed(_LOADING.get()):  # the innermost folder being loaded that holds the file
        name = verified.name_of(absolute)
        if name is not None:
            verified.check(name, data)
            break
    return data


def open_manifest(folder: str | Path) -> VerifiedFolder:
    """Read folder/manifest.json once and check every file against it; refuse unlisted weight files."""
    folder = Path(folder)
    files = _read_manifest(folder)
    for name in sorted(files):
        path = folder / _relative(folder, name)
        if not path.is_file():
            raise IntegrityError(f"model file {name!r} listed in {MANIFEST_NAME} is missing from {str(folder)!r}")
        _check_size(name, files[name], path.stat().st_size)
        _check_sha256(name, files[name], sha256_file(path))
    listed = set(files)
    for name in _default_files(folder):
        if name not in listed and Path(name).suffix.lower() in WEIGHT_SUFFIXES:
            raise IntegrityError(
                f"weight file {name!r} in {str(folder)!r} is not in {MANIFEST_NAME}; "
                "remove it or rewrite the manifest with `mmfusion manifest write`"
            )
    return VerifiedFolder(folder, files)


def verify_manifest(folder: str | Path) -> int:
    """Check every file against folder/manifest.json and refuse unlisted weight files; return files checked."""
    return len(open_manifest(folder).files)


def extend_manifest(folder: str | Path, files: list[str | Path]) -> Path:
    """Add `files` (new or rewritten by a tool) to folder/manifest.json; the other entries are kept as they are."""
    folder = Path(folder)
    entries = dict(_read_manifest(folder))
    for name in sorted({_relative(folder, name) for name in files}):
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"cannot add {name!r} to the manifest: no such file in {str(folder)!r}")
        entries[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return _write_entries(folder, entries)


def safe_torch_load(path: str | Path, map_location: str = "cpu") -> Any:
    """torch.load with weights_only=True of the bytes `read_model_file` checked; pickled objects are refused."""
    import torch

    try:
        data = read_model_file(path)  # checked against the manifest of a folder being loaded
    except FileNotFoundError:
        raise IntegrityError(f"checkpoint {str(path)!r} does not exist") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        globals_refused = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if not globals_refused:
            raise IntegrityError(f"checkpoint {str(path)!r} is not a torch checkpoint (damaged?)") from None
        raise IntegrityError(
            f"checkpoint {str(path)!r} holds Python objects beyond tensors and plain containers; refusing to "
            f"unpickle it (weights_only=True); save a state_dict instead. {globals_refused[0][:200]}"
        ) from None
    except Exception as error:  # torch raises KeyError, RuntimeError, EOFError, ... for a damaged file
        raise IntegrityError(
            f"checkpoint {str(path)!r} cannot be read as a torch checkpoint ({type(error).__name__}); damaged file?"
        ) from None
