"""Model versions: models/<name>/versions/<n>/ (config.yaml, weights.safetensors, training.json) and `current`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load, save_file

from mmfusion.adapters import apply_prefix
from mmfusion.config import CONFIG_FILE, ConfigError, PipelineConfig, check_folder_name, parse_config
from mmfusion.parts import load_all
from mmfusion.security.integrity import MANIFEST_NAME, extend_manifest, read_model_file

VERSIONS_DIR = "versions"
CURRENT_FILE = "current"
HISTORY_FILE = "history.json"
WEIGHTS_FILE = "weights.safetensors"
ADAPTER_FILE = "adapter.json"
LORA_FILE = "lora.safetensors"
RECORD_FILE = "training.json"


def parse_reference(text: str) -> tuple[str, int | None]:
    """'name@3' -> ('name', 3); 'name' -> ('name', None)."""
    name, _, version = text.rpartition("@") if "@" in text else (text, "", "")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ConfigError(f"{text!r}: expected MODEL@VERSION with a version number >= 1, got {version!r}")
    return name, int(version)


def versions_dir(model_dir: Path) -> Path:
    return Path(model_dir) / VERSIONS_DIR


def list_versions(model_dir: Path) -> list[int]:
    """Trained versions: numbered folders under versions/ that hold a config.yaml."""
    root = versions_dir(model_dir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / CONFIG_FILE).is_file())


def base_version(model_dir: Path) -> int:
    """The version number written in the model folder's own config.yaml."""
    raw = yaml.safe_load((Path(model_dir) / CONFIG_FILE).read_text()) or {}
    return int(raw.get("version", 1)) if isinstance(raw, dict) else 1


def current_version(model_dir: Path) -> int | None:
    """The promoted version, or None when the model folder's own config.yaml is what serves."""
    path = versions_dir(model_dir) / CURRENT_FILE
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if not text.isdigit():
        raise ConfigError(f"{path}: expected a version number, got {text!r}")
    return int(text)


def version_folder(model_dir: Path, version: int | None = None) -> Path | None:
    """The folder of `version` (default: the current one); None means the base config.yaml."""
    model_dir = Path(model_dir)
    if version is None:
        version = current_version(model_dir)
        if version is None:
            return None
    if version == base_version(model_dir) and version not in list_versions(model_dir):
        return None
    folder = versions_dir(model_dir) / str(version)
    if not (folder / CONFIG_FILE).is_file():
        available = [base_version(model_dir), *list_versions(model_dir)]
        raise ConfigError(
            f"{model_dir.name}@{version}: no such version; available: {', '.join(map(str, sorted(set(available))))}"
        )
    return folder


def load_version_config(model_dir: Path, folder: Path) -> PipelineConfig:
    """A version's config.yaml; relative paths resolve against the model folder (examples stay shared)."""
    path = folder / CONFIG_FILE
    load_all()
    config = parse_config(yaml.safe_load(read_model_file(path).decode("utf-8")), str(path), Path(model_dir))
    check_folder_name(config, model_dir, path)
    return config


def read_raw_config(model_dir: Path, folder: Path | None) -> dict[str, Any]:
    return yaml.safe_load(((folder or Path(model_dir)) / CONFIG_FILE).read_text())


def next_version(model_dir: Path) -> int:
    """One past every number in use: the base config, trained versions and export-only folders alike."""
    root = versions_dir(model_dir)
    used = [base_version(model_dir)] + (
        [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    )
    return max(used) + 1


def state_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state_dict with contiguous, unshared tensors (safetensors refuses shared storage)."""
    return {name: tensor.detach().cpu().clone().contiguous() for name, tensor in module.state_dict().items()}


def write_version(
    model_dir: Path,
    graph: torch.nn.Module,
    raw_config: dict[str, Any],
    record: dict[str, Any],
    adapter: dict[str, Any] | None = None,
    lora_state: dict[str, torch.Tensor] | None = None,
) -> tuple[int, Path]:
    """Write the next version folder atomically (built aside, then renamed); returns (version, folder)."""
    model_dir = Path(model_dir)
    root = versions_dir(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        version = next_version(model_dir)
        config = {**raw_config, "version": version}
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        save_file(state_for_saving(graph), str(staging / WEIGHTS_FILE), metadata={"version": str(version)})
        if adapter is not None:
            (staging / ADAPTER_FILE).write_text(json.dumps(adapter, indent=2))
        if lora_state:
            save_file({k: v.detach().cpu().contiguous() for k, v in lora_state.items()}, str(staging / LORA_FILE))
        (staging / RECORD_FILE).write_text(json.dumps({**record, "version": version}, indent=2, ensure_ascii=False))
        folder = root / str(version)
        if folder.exists():  # an export-only folder (versions/<n>/<backend>/): keep what is there
            for item in staging.iterdir():
                os.replace(item, folder / item.name)
            staging.rmdir()
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if (model_dir / MANIFEST_NAME).is_file():  # a signed model folder stays loadable: list the new version's files
        extend_manifest(model_dir, [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")])
    return version, folder


def load_version_weights(graph: torch.nn.Module, folder: Path) -> None:
    """Load a version's weights into a graph built from its config (re-applying a prefix adapter first)."""
    adapter_path = folder / ADAPTER_FILE
    if adapter_path.is_file():
        adapter = json.loads(read_model_file(adapter_path))
        if adapter.get("method") == "prefix":
            apply_prefix(graph, int(adapter["virtual_tokens"]))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        return
    state = load(read_model_file(weights))  # the bytes checked against the manifest are the bytes loaded
    missing, unexpected = graph.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{weights}: does not fit the graph of its config.yaml: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def read_record(folder: Path) -> dict[str, Any]:
    path = folder / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _history(model_dir: Path) -> list[int]:
    path = versions_dir(model_dir) / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def promote(model_dir: Path, version: int | None = None) -> int:
    """Point `current` at a version (default: the newest trained one) and remember the one it replaces."""
    model_dir = Path(model_dir)
    versions = list_versions(model_dir)
    if version is None:
        if not versions:
            raise ConfigError(f"{model_dir.name}: no trained versions to promote; train one first")
        version = versions[-1]
    version_folder(model_dir, version)  # raises for an unknown version
    history = _history(model_dir) or [current_version(model_dir) or base_version(model_dir)]
    if history[-1] != version:
        history.append(version)
    root = versions_dir(model_dir)
    root.mkdir(exist_ok=True)
    _write_atomic(root / HISTORY_FILE, json.dumps(history))
    _write_atomic(root / CURRENT_FILE, f"{version}\n")
    return version


def rollback(model_dir: Path) -> tuple[int, int]:
    """Point `current` back at the version promoted before it; returns (from, to)."""
    model_dir = Path(model_dir)
    history = _history(model_dir)
    current = current_version(model_dir)
    if current is None or len(history) < 2:
        raise ConfigError(f"{model_dir.name}: nothing to roll back to; the current version is the first promoted")
    history.pop()
    root = versions_dir(model_dir)
    _write_atomic(root / HISTORY_FILE, json.dumps(history))
    _write_atomic(root / CURRENT_FILE, f"{history[-1]}\n")
    return current, history[-1]
