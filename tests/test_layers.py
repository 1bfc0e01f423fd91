"""The floor plan holds at run time: the core loads no part, parts load no pipeline, and the contracts pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _modules_after(statement: str) -> set[str]:
    """The mmfusion modules a fresh interpreter holds after running `statement`."""
    script = (
        f"{statement}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('mmfusion'))))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _room(module: str) -> str:
    """'mmfusion.heads.report' -> 'heads'; '' for the package itself."""
    return (module.split(".") + [""])[1]


def test_validating_a_config_imports_no_part():
    loaded = _modules_after(
        "from mmfusion.config import PipelineConfig\n"
        "try:\n"
        "    PipelineConfig.model_validate({'name': 'x', 'encoders': {'image': {'name': 'image.efficientnet_lite0'}},"
        " 'fusion': {'name': 'identity'}, 'heads': {'h': {'name': 'embedding'}}})\n"
        "except Exception:\n"
        "    pass"
    )
    parts = {m for m in loaded if _room(m) in ("encoders", "fusion", "heads", "runtime", "graph", "pipeline")}
    assert not parts, parts


def test_unregistered_parts_are_a_clear_config_error_and_registration_fixes_it(tmp_path):
    script = (
        "from mmfusion.config import ConfigError, parse_config\n"
        "raw = {'name': 'x', 'encoders': {'text': {'name': 'text.hf'}}, 'fusion': {'name': 'identity'},"
        " 'heads': {'h': {'name': 'embedding'}}}\n"
        "try:\n"
        "    parse_config(raw, 'config.yaml')\n"
        "except ConfigError as error:\n"
        "    print('refused:', error)\n"
        "from mmfusion.parts import load_all\n"
        "load_all()\n"
        "print('accepted:', parse_config(raw, 'config.yaml').encoders['text'].name)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == (
        "refused: config.yaml: encoders.text.name: 'text.hf': no encoder is registered yet; "
        "call mmfusion.parts.load_all() first (got 'text.hf')"
    )
    assert lines[-1] == "accepted: text.hf"


@pytest.mark.parametrize("package", ["mmfusion.encoders", "mmfusion.fusion", "mmfusion.heads"])
def test_parts_load_without_pipeline_tasks_or_faces(package):
    loaded = _modules_after(f"import {package}")
    upper = ("pipeline", "repository", "training", "fitting", "prompts", "reports", "serving", "calls", "cli", "demo")
    upper += ("cameras",)  # the faces above serving
    assert not {m for m in loaded if _room(m) in upper}, sorted(loaded)


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.skip("import-linter is not installed in this environment (pip install -e '.[dev]')")
    done = subprocess.run([str(lint_imports)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout
