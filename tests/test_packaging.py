"""Packaging: the wheel ships the model repository and the demo inputs, found outside any checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mmfusion import __version__, resources
from mmfusion.repository.folder import REPO_MODELS, model_folders

REPO = Path(__file__).resolve().parents[1]
# What the sdist is made from (MANIFEST.in picks from these); tests, docs and benchmarks are not shipped.
SOURCE_FILES = ("setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "NOTICE", "README.md")
SOURCE_FOLDERS = ("mmfusion", "models", "samples")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


def test_environment_variables_choose_the_folders(monkeypatch, tmp_path):
    monkeypatch.setenv(resources.MODELS_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv(resources.SAMPLES_ENV, str(tmp_path / "inputs"))
    assert resources.models_root() == tmp_path / "mine"
    assert resources.samples_root() == tmp_path / "inputs"
    monkeypatch.setenv(resources.MODELS_ENV, "  ")  # empty: as if unset
    monkeypatch.delenv(resources.SAMPLES_ENV)
    assert resources.source_tree() == REPO
    assert resources.models_root() == REPO_MODELS == REPO / "models"
    assert resources.samples_root() == REPO / "samples"


def test_a_checkout_never_reads_packaged_data():
    assert not (REPO / "mmfusion" / resources.DATA_PACKAGE_DIR).exists()  # a stale build copy would shadow nothing


def test_license_and_notice_name_the_third_party_data():
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    notice = (REPO / "NOTICE").read_text()
    for named in ("DeepPCB", "MIT License", "Copyright (c) 2018 tangsanli5201", "CC0", "LibriVox", "detector.pt"):
        assert named in notice


def test_version_flag():
    from mmfusion.cli.main import build_parser

    with pytest.raises(SystemExit) as ended:
        build_parser().parse_args(["--version"])
    assert ended.value.code == 0


# Run by the installed copy, with the dependencies from this venv but neither the checkout nor the editable
# install on the path (-S: no .pth files, so no editable finder), from a folder outside the checkout.
INSTALLED_CHECK = """
import json, os, sys
from pathlib import Path
import mmfusion
from mmfusion import resources
from mmfusion.repository.folder import model_folders, models_root, verified_model_folder
from mmfusion.cli.main import main
root = models_root()
folders = model_folders()
verified = []
for name, folder in folders.items():
    with verified_model_folder(folder, require_manifest=True) as checked:
        if checked is not None:
            verified.append(name)
report = {
    "package": mmfusion.__file__, "checkout": str(resources.source_tree()), "models": str(root),
    "names": sorted(folders), "verified": sorted(verified), "samples": str(resources.samples_root()),
    "sample_files": sorted(p.name for p in resources.samples_root().iterdir()),
}
os.environ["MMFUSION_MODELS"] = sys.argv[1]
report["overridden"] = str(models_root())
print(json.dumps(report))
main(["--version"])
"""


@pytest.mark.slow
def test_installed_wheel_finds_models_and_samples(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(REPO / name, source / name)
    for name in SOURCE_FOLDERS:
        shutil.copytree(REPO / name, source / name, ignore=IGNORED)
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(dist), str(source)]
    built = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("mmfusion-*.whl")  # built from the sdist, so MANIFEST.in is tested too
    assert wheel.name == f"mmfusion-{__version__}-py3-none-any.whl"
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(site)]
    installed = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dependencies = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))  # this venv's
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("MMFUSION_", "PYTHON"))}
    environment["PYTHONPATH"] = os.pathsep.join([str(site), *dependencies])
    ran = subprocess.run(
        [sys.executable, "-S", "-c", INSTALLED_CHECK, str(tmp_path / "mine")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=elsewhere,
        env=environment,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    first, version = ran.stdout.strip().splitlines()[-2:]
    report = json.loads(first)
    data = site / "mmfusion" / resources.DATA_PACKAGE_DIR
    assert Path(report["package"]).parent == site / "mmfusion" and report["checkout"] == "None"
    assert report["models"] == str(data / "models")
    assert report["names"] == sorted(model_folders(REPO_MODELS)) and "pcb-inspect" in report["names"]
    assert report["verified"] == report["names"]  # every shipped file byte for byte, against its manifest
    assert report["samples"] == str(data / "samples")
    assert {"chelsea.jpg", "pcb_tested.jpg", "frames"} <= set(report["sample_files"])
    assert report["overridden"] == str(tmp_path / "mine")
    assert version == f"mmfusion {__version__}"
    assert not list(data.rglob("__pycache__"))
    licences = {path.name for path in site.glob("mmfusion-*.dist-info/licenses/*")}
    assert licences == {"LICENSE", "NOTICE"}
