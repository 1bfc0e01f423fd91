"""Key files: exposed ones refused, cheap scrypt refused, and a changed API key file taking effect without a restart."""

from __future__ import annotations

import base64
import json
import os
import re

import pytest
import yaml

from mmfusion.cli.main import main
from mmfusion.security.apikeys import MIN_SCRYPT_N, _b64, add_api_key, hash_api_key, load_api_keys
from mmfusion.security.auth import AuthConfig, AuthenticationError, Caller
from mmfusion.security.crypto import CryptoError, KeyStore
from mmfusion.security.tls import TlsFiles, channel_credentials, make_dev_certificates
from mmfusion.types import InputError
from tests.security.conftest import write_keys


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_an_api_key_file_other_users_can_touch_is_refused(tmp_path, mode):
    path = write_keys(tmp_path / "keys.yaml", {"operator": "k"})
    path.chmod(mode)
    expected = (
        f"api key file {path}: mode {mode:04o} lets other users read or change it; expected owner-only (chmod 600"
    )
    with pytest.raises(InputError, match=re.escape(expected)):
        AuthConfig(path)


def test_cli_refuses_an_exposed_api_key_file_in_one_line(tmp_path, capsys):
    path = write_keys(tmp_path / "keys.yaml", {"operator": "k"})
    path.chmod(0o644)
    assert main(["serve", "--port", "0", "--api-keys", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"mmfusion: error: api key file {path}: mode 0644")


def test_an_exposed_master_key_file_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    KeyStore.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(CryptoError, match=re.escape(f"key file {path}: mode 0644 lets other users read or change it")):
        KeyStore.from_file(path)


def test_exposed_tls_private_keys_are_refused(tmp_path):
    certs = make_dev_certificates(tmp_path)
    certs.server_key.chmod(0o644)
    with pytest.raises(InputError, match=re.escape(f"--tls-key {certs.server_key}: mode 0644")):
        TlsFiles.checked(certs.server_cert, certs.server_key)
    certs.client_key.chmod(0o640)
    with pytest.raises(InputError, match=re.escape(f"--tls-client-key {certs.client_key}: mode 0640")):
        channel_credentials(certs.ca_cert, certs.client_cert, certs.client_key)
    certs.ca_cert.chmod(0o644)  # certificates are public
    certs.client_key.chmod(0o600)
    channel_credentials(certs.ca_cert, certs.client_cert, certs.client_key)


@pytest.mark.parametrize(
    ("n", "r", "p", "message"),
    [
        (2, 8, 1, "scrypt N=2; expected a power of two >= 16384"),
        (2**10, 8, 1, "scrypt N=1024; expected a power of two >= 16384"),
        (2**14 + 1, 8, 1, "scrypt N=16385; expected a power of two >= 16384"),
        (2**14, 1, 1, "scrypt r=1, p=1; expected r >= 8 and 1 <= p <= 16"),
        (2**21, 8, 1, "scrypt N=2097152, r=8 needs 2048 MiB per check; expected <= 1024 MiB"),
    ],
)
def test_weak_or_huge_scrypt_costs_are_refused_when_hashing_and_loading(tmp_path, n, r, p, message):
    with pytest.raises(InputError, match=re.escape(f"api key hash: {message}")):
        hash_api_key("a-key", n=n, r=r, p=p)
    stored = f"scrypt${n}${r}${p}${_b64(os.urandom(16))}${_b64(os.urandom(32))}"
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"id": "weak", "role": "admin", "hash": stored}]}))
    path.chmod(0o600)
    with pytest.raises(InputError, match=re.escape(f"{path}: keys[0].hash: {message}")):
        load_api_keys(path)


def test_a_costlier_hash_than_openssls_default_memory_still_verifies(tmp_path):
    path = tmp_path / "keys.yaml"
    stored = hash_api_key("costly-key", n=2**15)  # 32 MiB: above hashlib's default maxmem
    path.write_text(yaml.safe_dump({"keys": [{"id": "costly", "role": "admin", "hash": stored}]}))
    path.chmod(0o600)
    assert MIN_SCRYPT_N == 2**14
    assert AuthConfig(path).authenticate([("x-api-key", "costly-key")]) == Caller("costly", "admin")


def test_a_changed_key_file_takes_effect_without_a_reload(tmp_path):
    path = tmp_path / "keys.yaml"
    revoked = add_api_key(path, "laptop", "admin")
    config = AuthConfig(path, reload_check_s=0.0)
    assert config.authenticate([("x-api-key", revoked)]) == Caller("laptop", "admin")
    document = yaml.safe_load(path.read_text())
    document["keys"] = []  # the key is revoked on disk; nobody sends SIGHUP
    path.write_text(yaml.safe_dump(document))
    added = add_api_key(path, "camera", "operator")
    with pytest.raises(AuthenticationError):
        config.authenticate([("x-api-key", revoked)])  # the memo of verified keys went with the old file
    assert config.authenticate([("x-api-key", added)]) == Caller("camera", "operator")
    path.write_text("keys: [{id: broken}]")  # a broken file keeps the keys in force
    assert config.authenticate([("x-api-key", added)]) == Caller("camera", "operator")


def test_the_key_file_is_looked_at_once_per_interval(tmp_path):
    path = tmp_path / "keys.yaml"
    first = add_api_key(path, "first", "admin")
    config = AuthConfig(path, reload_check_s=3600.0)
    path.unlink()
    second = add_api_key(path, "second", "admin")
    assert config.authenticate([("x-api-key", first)]).id == "first"  # not looked at again yet
    with pytest.raises(AuthenticationError):
        config.authenticate([("x-api-key", second)])
    assert config.reload()  # SIGHUP's path re-reads at once
    assert config.authenticate([("x-api-key", second)]).id == "second"


def test_cli_api_keys_add_writes_an_owner_only_file_and_prints_the_key_once(tmp_path, capsys):
    path = tmp_path / "keys.yaml"
    assert main(["api-keys", "add", str(path), "--id", "line-3", "--role", "operator"]) == 0
    captured = capsys.readouterr()
    key = captured.out.strip()
    assert re.fullmatch(r"mmk_line-3_[A-Za-z0-9_-]{43}", key) and key not in captured.err
    assert path.stat().st_mode & 0o777 == 0o600 and key not in path.read_text()
    assert AuthConfig(path).authenticate([("authorization", f"ApiKey {key}")]) == Caller("line-3", "operator")
    assert main(["api-keys", "add", str(path), "--id", "line-3", "--role", "admin"]) == 2
    assert "api key id 'line-3': already in" in capsys.readouterr().err


def test_master_key_files_written_by_keys_generate_load(tmp_path, capsys):
    path = tmp_path / "master.json"
    assert main(["keys", "generate", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    document = json.loads(path.read_text())
    assert KeyStore.from_file(path).keys["k1"] == base64.b64decode(document["keys"]["k1"])
