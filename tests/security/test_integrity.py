"""Model integrity: manifest write/verify (tampered, missing, extra files) and weights-only torch loading."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata

import pytest
import torch

from mmfusion.security.integrity import (
    MANIFEST_NAME,
    IntegrityError,
    safe_torch_load,
    verify_manifest,
    write_manifest,
)


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "pcb-inspect"
    (folder / "versions" / "1").mkdir(parents=True)
    (folder / "config.yaml").write_text("name: pcb-inspect\n")
    torch.save({"weight": torch.arange(6.0).reshape(2, 3)}, folder / "versions" / "1" / "encoder.pt")
    return folder


def test_manifest_lists_sha256_and_size(model_folder):
    destination = write_manifest(model_folder)
    manifest = json.loads(destination.read_text())
    weights = model_folder / "versions" / "1" / "encoder.pt"
    assert destination == model_folder / MANIFEST_NAME
    assert sorted(manifest["files"]) == ["config.yaml", "versions/1/encoder.pt"]
    entry = manifest["files"]["versions/1/encoder.pt"]
    assert entry == {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "size": weights.stat().st_size}
    assert manifest["tools"]["torch"] == metadata.version("torch")
    assert manifest["created"].endswith("+00:00")
    assert verify_manifest(model_folder) == 2


def test_tampered_weights_are_refused_by_name(model_folder):
    write_manifest(model_folder)
    weights = model_folder / "versions" / "1" / "encoder.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"'versions/1/encoder\.pt' does not match its sha256"):
        verify_manifest(model_folder)


def test_resized_file_is_refused(model_folder):
    write_manifest(model_folder)
    with open(model_folder / "config.yaml", "a") as handle:
        handle.write("extra: 1\n")
    with pytest.raises(IntegrityError, match=r"'config\.yaml' is \d+ bytes; manifest\.json says \d+"):
        verify_manifest(model_folder)


def test_missing_file_is_refused(model_folder):
    write_manifest(model_folder)
    os.remove(model_folder / "versions" / "1" / "encoder.pt")
    with pytest.raises(IntegrityError, match=r"'versions/1/encoder\.pt' listed in manifest\.json is missing"):
        verify_manifest(model_folder)


def test_unlisted_weight_file_is_refused_but_other_files_are_not(model_folder):
    write_manifest(model_folder)
    (model_folder / "README.md").write_text("notes\n")
    assert verify_manifest(model_folder) == 2
    torch.save({"w": torch.zeros(1)}, model_folder / "versions" / "1" / "planted.pth")
    with pytest.raises(IntegrityError, match=r"weight file 'versions/1/planted\.pth' .* is not in manifest\.json"):
        verify_manifest(model_folder)


def test_explicit_file_list_and_bad_entries(model_folder, tmp_path):
    write_manifest(model_folder, ["versions/1/encoder.pt"])
    assert list(json.loads((model_folder / MANIFEST_NAME).read_text())["files"]) == ["versions/1/encoder.pt"]
    with pytest.raises(IntegrityError, match="'absent.bin' to the manifest: no such file"):
        write_manifest(model_folder, ["absent.bin"])
    with pytest.raises(IntegrityError, match="outside the model folder"):
        write_manifest(model_folder, ["../escape.pt"])
    manifest_path = model_folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "size": 1}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="outside the model folder"):
        verify_manifest(model_folder)
    with pytest.raises(IntegrityError, match="manifest.json' does not exist; create it with"):
        verify_manifest(tmp_path)


class Payload:
    """A pickled object whose unpickling would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_safe_torch_load_accepts_tensors_only(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.ones(2, 2), "step": 3}, plain)
    state = safe_torch_load(plain)
    assert torch.equal(state["weight"], torch.ones(2, 2)) and state["step"] == 3

    malicious = tmp_path / "malicious.pt"
    torch.save({"weight": torch.ones(1), "hook": Payload()}, malicious)
    with pytest.raises(IntegrityError, match=r"malicious\.pt' holds Python objects beyond tensors.*GLOBAL"):
        safe_torch_load(malicious)

    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(IntegrityError, match=r"damaged\.pt' (cannot be read|is not) a torch checkpoint"):
        safe_torch_load(damaged)
    with pytest.raises(IntegrityError, match="does not exist"):
        safe_torch_load(tmp_path / "absent.pt")
