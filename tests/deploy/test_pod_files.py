"""The pod's init container, run here on kubelet-shaped volumes: serve then accepts the secret files and models."""

from __future__ import annotations

import shutil
import stat

import pytest

from mmfusion.cli.serve import _security_options
from mmfusion.security.apikeys import add_api_key
from mmfusion.security.crypto import KeyStore
from mmfusion.security.files import check_private
from mmfusion.security.integrity import IntegrityError, verify_manifest
from mmfusion.security.tls import make_dev_certificates
from mmfusion.types import InputError
from tests.deploy.conftest import (
    REPO,
    SECRETS_DIR,
    find,
    init_script,
    kubelet_volume,
    parse_serve,
    rendered,
    run_init_script,
    serve_container,
)


def _secret_contents(tmp_path) -> dict[str, bytes]:
    """Real files of every kind the chart mounts, made by mmfusion's own tools."""
    made = tmp_path / "made"
    made.mkdir()
    add_api_key(made / "api-keys.yaml", "line-1", "operator")
    KeyStore.generate().save(made / "audit-key.json")
    certificates = make_dev_certificates(made / "tls", hostnames=("mmfusion", "localhost"))
    public_key = made / "jwt-public.pem"
    _write_rsa_public_key(public_key)
    return {
        "api-keys.yaml": (made / "api-keys.yaml").read_bytes(),
        "audit-key.json": (made / "audit-key.json").read_bytes(),
        "jwt-public.pem": public_key.read_bytes(),
        "tls.crt": certificates.server_cert.read_bytes(),
        "tls.key": certificates.server_key.read_bytes(),
        "ca.crt": certificates.ca_cert.read_bytes(),
    }


def _write_rsa_public_key(path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _pod_paths(tmp_path, environment: dict[str, str]) -> dict[str, str]:
    """The init container's folders, moved under tmp_path (same names, so the args can be rewritten)."""
    return {name: str(tmp_path / "pod" / path.strip("/")) for name, path in environment.items()}


def test_secret_files_reach_serve_owner_only_and_serve_accepts_them(tmp_path, monkeypatch):
    documents = rendered("tls-mtls-jwt-policy")
    pod = find(documents, "Deployment")["spec"]["template"]["spec"]
    projected = next(v for v in pod["volumes"] if v["name"] == "secret-sources")["projected"]
    keys = [item["key"] for source in projected["sources"] for item in source["secret"]["items"]]
    contents = _secret_contents(tmp_path)
    script, environment = init_script(documents)
    paths = _pod_paths(tmp_path, environment)
    source = kubelet_volume(
        tmp_path / "pod" / environment["SECRET_SOURCES"].strip("/"),
        {key: contents[key] for key in keys},
        projected["defaultMode"],
    )
    # As the kubelet leaves them (group-readable so the non-root user can read them), serve refuses them.
    with pytest.raises(InputError, match="lets other users read"):
        check_private(source / "tls.key", "--tls-key")
    secrets = tmp_path / "pod" / SECRETS_DIR.strip("/")
    secrets.mkdir(parents=True)
    run_init_script(script, paths)
    copied = sorted(path.name for path in secrets.iterdir())
    assert copied == sorted(keys)
    for path in secrets.iterdir():
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o400
        assert path.read_bytes() == contents[path.name]
    # The container's own command line, its paths moved here, passes serve's checks of flags and files.
    container = serve_container(documents)
    moved = [arg.replace(SECRETS_DIR, str(secrets)) for arg in container["args"]]
    args = parse_serve({**container, "args": moved})
    monkeypatch.setenv("MMFUSION_JWT_SECRET", "a-long-random-shared-secret-for-hs256-tokens")
    options = _security_options(args)
    assert options["tls"].client_ca == secrets / "ca.crt"
    assert options["auth"].jwt is not None and options["audit_cipher"] is not None
    assert options["rate_limit"] is not None and options["trusted_proxies"] == ("10.0.0.0/8",)


def test_default_secret_files_pass_serves_checks(tmp_path):
    documents = rendered("default")
    script, environment = init_script(documents)
    contents = _secret_contents(tmp_path)
    kubelet_volume(
        tmp_path / "pod" / environment["SECRET_SOURCES"].strip("/"),
        {key: contents[key] for key in ("api-keys.yaml", "audit-key.json")},
        0o440,
    )
    secrets = tmp_path / "pod" / SECRETS_DIR.strip("/")
    secrets.mkdir(parents=True)
    run_init_script(script, _pod_paths(tmp_path, environment))
    container = serve_container(documents)
    args = parse_serve({**container, "args": [arg.replace(SECRETS_DIR, str(secrets)) for arg in container["args"]]})
    options = _security_options(args)
    assert options["auth"].api_keys_path == str(secrets / "api-keys.yaml")
    assert options["tls"] is None and options["audit_path"] == "/var/log/mmfusion/audit/audit.log"


def _configmap_layout(folder) -> dict[str, bytes]:
    """A model folder's files as ConfigMap items would project them (paths inside the folder)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_configmap_model_folders_are_copied_into_plain_verified_folders(tmp_path):
    documents = rendered("configmaps-created-secret")
    script, environment = init_script(documents)
    paths = _pod_paths(tmp_path, environment)
    sources = tmp_path / "pod" / environment["MODEL_SOURCES"].strip("/")
    for name in ("call-centre", "defect-anomaly"):  # nested folders; a weight file (memory_bank.npy)
        kubelet_volume(sources / name, _configmap_layout(REPO / "models" / name), 0o644)
    # Mounted as it is, the ConfigMap's hidden timestamped copy holds an unlisted weight file: refused.
    with pytest.raises(IntegrityError, match="not in manifest.json"):
        verify_manifest(sources / "defect-anomaly")
    models = tmp_path / "pod" / environment["MODELS_DIR"].strip("/")
    models.mkdir(parents=True)
    run_init_script(script, paths)
    for name in ("call-centre", "defect-anomaly"):
        copied = models / name
        assert not any(path.is_symlink() or path.name.startswith("..") for path in copied.rglob("*"))
        assert verify_manifest(copied) == len(_manifest_files(REPO / "models" / name))
    container = serve_container(documents)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MMFUSION_MODELS"] == environment["MODELS_DIR"]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["models"]["mountPath"] == environment["MODELS_DIR"] and mounts["models"]["readOnly"]


def _manifest_files(folder) -> list[str]:
    import json

    return list(json.loads((folder / "manifest.json").read_text())["files"])


def test_the_init_script_runs_with_nothing_to_copy(tmp_path):
    script, environment = init_script(rendered("default"))
    paths = _pod_paths(tmp_path, environment)
    run_init_script(script, paths)  # no source folders at all: nothing copied, no error
    assert shutil.which("install") and shutil.which("cp")  # what the script needs from the image (coreutils)
