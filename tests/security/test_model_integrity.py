"""Model integrity as served: manifests required by `serve`, signed shipped models, contained config paths, and
files checked against the manifest as they are read (no window between verifying and loading)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mmfusion import pipeline as pipeline_module
from mmfusion.cli.main import main
from mmfusion.config import EXTERNAL_PATHS_ENV, ConfigError, load_config, validate_params
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import REPO_MODELS, model_folders
from mmfusion.repository.versions import read_raw_config, write_version
from mmfusion.security.integrity import (
    MANIFEST_NAME,
    IntegrityError,
    open_manifest,
    read_model_file,
    verified_reads,
    verify_manifest,
    write_manifest,
)
from mmfusion.serving import server
from mmfusion.serving.models import ModelManager
from tests.runtime.conftest import write_tiny_model
from tests.test_pipeline import RED, tiny_model

SHIPPED = sorted(model_folders(REPO_MODELS).values())


def _set_example(folder: Path, image: str) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["heads"]["colour"]["params"]["examples"][0]["image"] = image
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def _after_verification(monkeypatch, change) -> None:
    """Run `change` right after the model folder was verified, before any of its files is loaded."""
    original = pipeline_module.version_folder

    def version_folder(*args, **kwargs):
        change()
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "version_folder", version_folder)


# (a) `serve` requires a manifest --------------------------------------------------------------------------


def test_serve_refuses_an_unsigned_model_folder_naming_the_fix(tmp_path, monkeypatch, capsys):
    folder = tiny_model(tmp_path / "tiny")

    def start(self):
        raise AssertionError("an unsigned model folder was served")

    monkeypatch.setattr(server.InspectionServer, "start", start)
    assert main(["serve", str(folder), "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mmfusion: error: ") and error.count("\n") == 1
    assert f"{folder}: refused to load: no manifest.json" in error
    assert f"`mmfusion manifest write {folder}`" in error


def test_serve_requires_manifests_by_default_and_warns_when_told_not_to(monkeypatch, capsys):
    calls: list[dict] = []
    monkeypatch.setattr(server, "serve", lambda *args, **kwargs: calls.append(kwargs) or 0)
    assert main(["serve", "tiny"]) == 0
    assert calls[-1]["require_manifest"] is True and "WARNING" not in capsys.readouterr().err
    assert main(["serve", "tiny", "--no-require-manifest"]) == 0
    assert calls[-1]["require_manifest"] is False
    assert "mmfusion: WARNING: --no-require-manifest: model folders without manifest.json load UNVERIFIED" in (
        capsys.readouterr().err
    )


def test_load_model_of_an_unsigned_folder_is_a_failed_precondition(tmp_path):
    import grpc

    from mmfusion.client import InspectionClient
    from mmfusion.proto import inspection_pb2 as pb

    tiny_model(tmp_path / "tiny")
    with server.build_server([], port=0, model_root=tmp_path, require_manifest=True) as running:
        with InspectionClient(f"127.0.0.1:{running.port}", timeout=30) as client:
            with pytest.raises(grpc.RpcError) as error:
                client.stub.LoadModel(pb.LoadModelRequest(name="tiny"), timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no manifest.json" in error.value.details() and "mmfusion manifest write" in error.value.details()
    assert running.models.loaded_names() == []


def test_a_signed_folder_loads_when_a_manifest_is_required(tmp_path):
    folder = tiny_model(tmp_path / "tiny")
    write_manifest(folder)
    manager = ModelManager(tmp_path, require_manifest=True)
    try:
        entry = manager.load("tiny")
        assert entry.pipeline.predict(image=RED).outputs["colour"]["label"] == "red"
        assert entry.pipeline.verified is not None and "red.png" in entry.pipeline.verified.files
    finally:
        manager.close(0)


# (b) the shipped models are signed -----------------------------------------------------------------------


def _git_files(folder: Path) -> set[str] | None:
    """Files git has or would add under `folder` (tracked, or untracked and not ignored); None outside git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "."],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(listed.splitlines())


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda folder: folder.name)
def test_every_shipped_model_is_signed_over_exactly_its_committed_files(folder):
    assert verify_manifest(folder) >= 2
    listed = set(json.loads((folder / MANIFEST_NAME).read_text())["files"])
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    }
    assert listed == present  # nothing in the folder loads unverified
    in_git = _git_files(folder)
    if in_git is not None:  # a fresh clone has every listed file: none is ignored or generated
        assert listed | {MANIFEST_NAME} <= in_git
        attributes = subprocess.run(
            ["git", "check-attr", "text", "--", "config.yaml"], cwd=folder, capture_output=True, text=True, timeout=30
        ).stdout
        assert attributes.strip().endswith("text: unset")  # checked out byte for byte on every platform


def test_a_shipped_model_with_fitted_weights_loads_when_a_manifest_is_required():
    pipeline = Pipeline(REPO_MODELS / "pcb-template", require_manifest=True)
    try:
        assert {"fitted/defects/detector.pt", "config.yaml"} <= set(pipeline.verified.files)
    finally:
        pipeline.close()


# (c) paths in a model config stay inside the model folder ---------------------------------------------------


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("/etc/hostname", r"'/etc/hostname' is an absolute path; expected a path inside the model folder"),
        ("../outside.png", r"'\.\./outside\.png' leads outside the model folder"),
        ("examples/../../outside.png", r"'examples/\.\./\.\./outside\.png' leads outside the model folder"),
        ("link.png", r"'link\.png' leads outside the model folder"),
    ],
)
def test_config_paths_outside_the_model_folder_are_refused(tmp_path, image, message):
    folder = tiny_model(tmp_path / "tiny")
    (tmp_path / "outside.png").write_bytes((folder / "red.png").read_bytes())
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    _set_example(folder, image)
    with pytest.raises(ConfigError, match=r"config\.yaml: heads\.colour\.params\.examples\.0\.image: " + message):
        load_config(folder)


def test_an_operator_may_allow_a_folder_outside_the_model_folders(tmp_path, monkeypatch):
    folder = tiny_model(tmp_path / "tiny")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "red.png").write_bytes((folder / "red.png").read_bytes())
    _set_example(folder, str(shared / "red.png"))
    monkeypatch.setenv(EXTERNAL_PATHS_ENV, str(shared))
    config = load_config(folder)
    assert config.heads["colour"].params["examples"][0]["image"] == str(shared / "red.png")


def test_a_report_template_file_outside_the_model_folder_is_refused(tmp_path):
    from mmfusion.heads.report import ReportParams

    with pytest.raises(ConfigError, match=r"heads\.report\.params\.template: '\.\./t\.yaml' leads outside"):
        validate_params(ReportParams, {"template": "../t.yaml"}, "config.yaml", ("heads", "report", "params"), tmp_path)
    inside = validate_params(ReportParams, {"template": "t.yaml"}, "config.yaml", ("heads",), tmp_path)
    assert inside.template == str(tmp_path / "t.yaml")


# (d) what was verified is what is loaded -----------------------------------------------------------------


def test_an_example_image_swapped_after_verification_is_refused(tmp_path, monkeypatch):
    folder = tiny_model(tmp_path / "tiny")
    write_manifest(folder)
    _after_verification(monkeypatch, lambda: (folder / "red.png").write_bytes((folder / "blue.png").read_bytes()))
    with pytest.raises(ConfigError, match=r"tiny: refused to load: model file 'red\.png' is \d+ bytes; manifest"):
        Pipeline(folder)


def test_a_config_changed_after_verification_is_refused(tmp_path, monkeypatch):
    folder = tiny_model(tmp_path / "tiny")
    write_manifest(folder)
    text = (folder / "config.yaml").read_text()
    _after_verification(monkeypatch, lambda: (folder / "config.yaml").write_text(text.replace("seed: 3", "seed: 4")))
    with pytest.raises(ConfigError, match=r"refused to load: model file 'config\.yaml' does not match its sha256"):
        Pipeline(folder)


@pytest.mark.parametrize("name", ["calibration.json", "detector.pt"])
def test_fitted_artifacts_changed_after_verification_are_refused(tmp_path, monkeypatch, name):
    folder = tmp_path / "pcb-template"
    shutil.copytree(REPO_MODELS / "pcb-template", folder)
    artifact = folder / "fitted" / "defects" / name

    def tamper() -> None:
        data = bytearray(artifact.read_bytes())
        data[-3] ^= 0x01
        artifact.write_bytes(bytes(data))

    _after_verification(monkeypatch, tamper)
    with pytest.raises(ConfigError, match=rf"refused to load: model file 'fitted/defects/{name}' does not match"):
        Pipeline(folder)


def test_a_file_the_manifest_does_not_list_is_not_loaded(tmp_path):
    folder = tiny_model(tmp_path / "tiny")
    write_manifest(folder, ["config.yaml"])  # the example images are not covered
    with pytest.raises(ConfigError, match=r"refused to load: model file '(red|blue)\.png' is not listed in"):
        Pipeline(folder)


def test_a_trained_version_is_signed_and_its_weights_are_checked_as_loaded(tmp_path, monkeypatch):
    folder = write_tiny_model(tmp_path / "tiny")  # a 32-wide BERT: small version weights
    write_manifest(folder)
    listed = verify_manifest(folder)
    base = Pipeline(folder)
    version, written = write_version(folder, base.graph, read_raw_config(folder, None), {"method": "test"})
    assert verify_manifest(folder) == listed + 3  # the version's config.yaml, weights and training record
    weights = written / "weights.safetensors"
    _after_verification(monkeypatch, lambda: weights.write_bytes(weights.read_bytes()[:-8] + bytes(8)))
    with pytest.raises(ConfigError, match=rf"model file 'versions/{version}/weights\.safetensors' does not match"):
        Pipeline(folder, version=version)  # its config.yaml was listed and read; its weights are checked as read


def test_read_model_file_checks_bytes_against_the_manifest_read_once(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    (tmp_path / "elsewhere.json").write_text("{}")
    (folder / "link.json").symlink_to(tmp_path / "elsewhere.json")
    write_manifest(folder, ["a.json"])
    verified = open_manifest(folder)
    assert read_model_file(folder / "a.json") == b"{}"  # outside verified_reads: read as it is
    with verified_reads(verified):
        assert read_model_file(folder / "a.json") == b"{}"
        assert read_model_file(tmp_path / "elsewhere.json") == b"{}"  # not in the folder: not this manifest's
        (folder / "a.json").write_text("[]")  # same size, other bytes
        with pytest.raises(IntegrityError, match=r"'a\.json' does not match its sha256"):
            read_model_file(folder / "a.json")
        with pytest.raises(IntegrityError, match=r"'link\.json' is not listed in"):
            read_model_file(folder / "link.json")
