"""Where the shipped model repository (`models/`) and the demo inputs (`samples/`) are found.

In order: the environment variable (`MMFUSION_MODELS`, `MMFUSION_SAMPLES`) when set; the folder at the top
of the source tree when mmfusion runs from a checkout (editable installs too); else the copy that a wheel
ships inside the package (`mmfusion/_data/models`, `mmfusion/_data/samples`, put there by setup.py's build).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

MODELS_ENV = "MMFUSION_MODELS"
SAMPLES_ENV = "MMFUSION_SAMPLES"
DATA_PACKAGE_DIR = "_data"  # inside the installed package: mmfusion/_data/{models,samples}


def source_tree() -> Path | None:
    """The checkout this package runs from (the folder holding setup.py and mmfusion/); None when installed."""
    top = Path(__file__).resolve().parents[1]
    is_checkout = (top / "setup.py").is_file() and (top / "mmfusion" / "__init__.py").is_file()
    return top if is_checkout else None


def packaged_data() -> Path:
    """The data folder inside the installed package (exists in a wheel install; absent in a checkout)."""
    return Path(str(files("mmfusion"))) / DATA_PACKAGE_DIR


def data_folder(name: str, env: str) -> Path:
    """`$env` when set and not empty, else the checkout's `name/`, else the package's `_data/name/`."""
    chosen = os.environ.get(env, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    top = source_tree()
    if top is not None and (top / name).is_dir():
        return top / name
    return packaged_data() / name


def models_root() -> Path:
    """The model repository: $MMFUSION_MODELS, else `models/` of the checkout or of the installed package."""
    return data_folder("models", MODELS_ENV)


def samples_root() -> Path:
    """The demo's sample inputs: $MMFUSION_SAMPLES, else `samples/` of the checkout or of the installed package."""
    return data_folder("samples", SAMPLES_ENV)
