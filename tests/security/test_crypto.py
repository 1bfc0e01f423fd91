"""Envelope encryption: round trips, tampering in every region, wrong/unknown keys, rotation and rewrap."""

from __future__ import annotations

import base64
import json
import os

import pytest

from mmfusion.security.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    WRAPPED_KEY_BYTES,
    CryptoError,
    FieldCipher,
    KeyStore,
    rewrap,
    rotate,
)

PLAINTEXT = b"defect report for board 4711: solder bridge at U3"


@pytest.fixture
def keystore() -> KeyStore:
    return KeyStore.generate()


def test_round_trip_with_aad(keystore):
    blob = keystore.encrypt(PLAINTEXT, b"context")
    assert PLAINTEXT not in blob
    assert keystore.decrypt(blob, b"context") == PLAINTEXT
    assert keystore.encrypt(PLAINTEXT, b"context") != blob  # fresh data key and nonce every time
    assert keystore.decrypt(keystore.encrypt(b""), b"") == b""


def test_wrong_aad_is_refused(keystore):
    blob = keystore.encrypt(PLAINTEXT, b"file-a")
    with pytest.raises(CryptoError, match="failed authentication"):
        keystore.decrypt(blob, b"file-b")


def test_wrong_master_key_is_refused(keystore):
    blob = keystore.encrypt(PLAINTEXT)
    impostor = KeyStore({"k1": os.urandom(KEY_BYTES)}, "k1")
    with pytest.raises(CryptoError, match="master key 'k1' failed authentication"):
        impostor.decrypt(blob)


def test_unknown_key_id_is_refused(keystore):
    blob = keystore.encrypt(PLAINTEXT)
    other = KeyStore({"k7": os.urandom(KEY_BYTES)}, "k7")
    with pytest.raises(CryptoError, match="names master key 'k1'.*has k7"):
        other.decrypt(blob)


def _regions(blob: bytes) -> dict[str, int]:
    """An offset inside each region of a blob made with key id 'k1'."""
    id_end = 2 + len("k1")
    return {
        "version": 0,
        "key id": 2,
        "wrapped key": id_end + 5,
        "payload nonce": id_end + WRAPPED_KEY_BYTES + 3,
        "ciphertext": id_end + WRAPPED_KEY_BYTES + NONCE_BYTES + 4,
        "tag": len(blob) - 1,
    }


@pytest.mark.parametrize("region", ["version", "key id", "wrapped key", "payload nonce", "ciphertext", "tag"])
def test_a_flipped_byte_anywhere_is_refused(keystore, region):
    blob = bytearray(keystore.encrypt(PLAINTEXT))
    blob[_regions(bytes(blob))[region]] ^= 0x01
    with pytest.raises(CryptoError):
        keystore.decrypt(bytes(blob))


def test_truncated_blob_is_refused(keystore):
    blob = keystore.encrypt(PLAINTEXT)
    with pytest.raises(CryptoError, match="truncated"):
        keystore.decrypt(blob[:20])
    with pytest.raises(CryptoError, match="too short"):
        keystore.decrypt(b"\x01")


def test_key_file_round_trip_and_permissions(tmp_path, keystore):
    path = tmp_path / "keys.json"
    keystore.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = KeyStore.from_file(path)
    assert loaded.active_id == "k1" and loaded.keys == keystore.keys
    assert loaded.decrypt(keystore.encrypt(PLAINTEXT)) == PLAINTEXT


def test_yaml_key_file(tmp_path):
    key = base64.b64encode(os.urandom(KEY_BYTES)).decode()
    path = tmp_path / "keys.yaml"
    path.write_text(f"active: prod-1\nkeys:\n  prod-1: {key}\n")
    path.chmod(0o600)  # key files that other users can read are refused
    assert KeyStore.from_file(path).keys["prod-1"] == base64.b64decode(key)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"active": "k1", "keys": {"k1": base64.b64encode(b"short").decode()}}, "5 bytes; expected 32"),
        ({"active": "k1", "keys": {"k1": "not base64!"}}, "not valid base64"),
        ({"active": "k2", "keys": {"k1": base64.b64encode(bytes(32)).decode()}}, "active key 'k2' is not one of"),
        ({"keys": "nope"}, "expected a mapping"),
    ],
)
def test_bad_key_files_say_what_is_wrong(tmp_path, document, message):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    with pytest.raises(CryptoError, match=message):
        KeyStore.from_file(path)


def test_missing_key_file(tmp_path):
    with pytest.raises(CryptoError, match="does not exist; create one with `mmfusion keys generate"):
        KeyStore.from_file(tmp_path / "absent.json")


def test_key_from_environment(monkeypatch):
    key = os.urandom(KEY_BYTES)
    monkeypatch.setenv("MMFUSION_MASTER_KEY", base64.b64encode(key).decode())
    keystore = KeyStore.from_env()
    assert keystore.active_id == "env" and keystore.keys["env"] == key
    monkeypatch.delenv("MMFUSION_MASTER_KEY")
    with pytest.raises(CryptoError, match="MMFUSION_MASTER_KEY is not set"):
        KeyStore.from_env()


def test_rotation_then_rewrap_keeps_payload_and_decrypts(tmp_path, keystore):
    key_file = tmp_path / "keys.json"
    keystore.save(key_file)
    files = [tmp_path / f"record-{i}.bin" for i in range(3)]
    for i, path in enumerate(files):
        keystore.encrypt_file(PLAINTEXT + bytes([i]), path)
    payload_before = files[0].read_bytes()[2 + 2 + WRAPPED_KEY_BYTES :]

    assert rotate(key_file) == "k2"
    rotated = KeyStore.from_file(key_file)
    assert rotated.active_id == "k2" and set(rotated.keys) == {"k1", "k2"}
    assert rotated.decrypt_file(files[0]) == PLAINTEXT + b"\x00"  # old files still readable before rewrap

    assert rewrap(files, rotated) == 3
    assert rewrap(files, rotated) == 0  # already under the active key
    assert files[0].read_bytes()[2 + 2 + WRAPPED_KEY_BYTES :] == payload_before  # payload not re-encrypted
    only_new = KeyStore({"k2": rotated.keys["k2"]}, "k2")
    assert [only_new.decrypt_file(p) for p in files] == [PLAINTEXT + bytes([i]) for i in range(3)]
    assert rotate(key_file) == "k3"


def test_encrypt_file_is_atomic(tmp_path, keystore, monkeypatch):
    path = tmp_path / "secret.bin"
    keystore.encrypt_file(b"version one", path)
    assert path.stat().st_mode & 0o777 == 0o600

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        keystore.encrypt_file(b"version two", path)
    monkeypatch.undo()
    assert keystore.decrypt_file(path) == b"version one"  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["secret.bin"]  # no temporary left behind


def test_decrypt_file_names_the_file(tmp_path, keystore):
    path = tmp_path / "secret.bin"
    keystore.encrypt_file(PLAINTEXT, path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CryptoError, match=r"secret\.bin.*failed authentication"):
        keystore.decrypt_file(path)


def test_field_cipher_values(keystore):
    cipher = FieldCipher(keystore)
    encoded = cipher.encrypt_value({"verdict": "defect", "score": 0.93}, b"audit:1:result")
    assert isinstance(encoded, str) and "defect" not in encoded
    assert cipher.decrypt_value(encoded, b"audit:1:result") == {"verdict": "defect", "score": 0.93}
    with pytest.raises(CryptoError):
        cipher.decrypt_value(encoded, b"audit:2:result")
    with pytest.raises(CryptoError, match="not valid base64"):
        cipher.decrypt_value("%%%", b"")
    assert cipher.decrypt(cipher.encrypt(b"raw", b"a"), b"a") == b"raw"
