"""Where model folders live and what a folder holds: the repository root, names, config, fitted artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmfusion import resources
from mmfusion.config import CONFIG_FILE, ConfigError, PipelineConfig, load_config
from mmfusion.parts import load_all
from mmfusion.security.integrity import MANIFEST_NAME, IntegrityError, VerifiedFolder, open_manifest, verified_reads

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"  # the checkout's models/ (tests use it by name)
FITTED_DIR = "fitted"  # fitted/<head name>/: what a head learned from data (memory bank, weights, calibration)
CALIBRATION_DIR = "calibration"  # real images of the parts: INT8 ranges and the INT8-against-FP32 check
CALL_FILE = "call.yaml"  # a call-analysis model's settings (VAD, ASR, labels, phrase lists)


def models_root() -> Path:
    """The model repository: $MMFUSION_MODELS, else `models/` of the checkout or of the installed wheel."""
    return resources.models_root()


def model_folders(root: Path | None = None) -> dict[str, Path]:
    """Every model folder of a repository by name (a folder with a config.yaml), in name order."""
    root = models_root() if root is None else Path(root)
    return {path.parent.name: path.parent for path in sorted(root.glob(f"*/{CONFIG_FILE}"))}


def resolve_model_dir(model: str | Path) -> Path:
    """A model name in the model repository, or a path to a model folder."""
    path = Path(model)
    if path.is_dir():
        return path
    candidate = models_root() / str(model)
    if candidate.is_dir():
        return candidate
    available = list(model_folders())
    raise ConfigError(
        f"model {str(model)!r} is neither a folder nor a model in {models_root()}; "
        f"available: {', '.join(available) or 'none'}"
    )


def read_config(model_dir: str | Path) -> PipelineConfig:
    """A folder's validated `config.yaml`, checked against the registered built-in parts."""
    load_all()
    return load_config(model_dir)


def has_manifest(model_dir: Path) -> bool:
    """Whether a model folder has a sha256 manifest (manifest.json)."""
    return (Path(model_dir) / MANIFEST_NAME).is_file()


def check_manifest_present(model_dir: Path) -> None:
    """ConfigError naming the folder and the fix when a model folder has no sha256 manifest."""
    if not has_manifest(model_dir):
        raise ConfigError(
            f"{model_dir}: refused to load: no {MANIFEST_NAME}, and a manifest is required; check the folder's files, "
            f"then sign it with `mmfusion manifest write {model_dir}` (or serve with --no-require-manifest)"
        )


@contextmanager
def verified_model_folder(model_dir: Path, require_manifest: bool = False) -> Iterator[VerifiedFolder | None]:
    """Check a model folder against its manifest, then each file loaded with `read_model_file` again as it is read.

    Load the folder inside this block: config, examples, fitted artifacts and version weights read with
    `read_model_file` are the bytes that were hashed; the block gets the folder's VerifiedFolder to check later
    reads with (`verified_reads`). A folder without a manifest loads unverified (None), or is refused with
    `require_manifest`.
    """
    model_dir = Path(model_dir)
    if require_manifest:
        check_manifest_present(model_dir)
    if not has_manifest(model_dir):
        yield None
        return
    try:
        with verified_reads(open_manifest(model_dir)) as verified:
            yield verified
    except IntegrityError as error:
        raise ConfigError(f"{model_dir}: refused to load: {error}") from None


def verify_model_folder(model_dir: Path, require_manifest: bool = False) -> None:
    """Check a model folder against its sha256 manifest (when it has one, or always with `require_manifest`)."""
    with verified_model_folder(model_dir, require_manifest):
        pass


def fitted_dir(model_dir: Path, head_name: str) -> Path:
    """fitted/<head>/ of a model folder: what that head learned from data."""
    return Path(model_dir) / FITTED_DIR / head_name
