"""`mmfusion audit|keys|manifest` subcommands: output, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from mmfusion.cli.security import add_commands
from mmfusion.security.audit import AuditLog, rotated_paths
from mmfusion.security.crypto import KeyStore


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Parse and run like mmfusion.cli.main: ValueError/OSError become one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(prog="mmfusion")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
    except (ValueError, OSError) as error:
        print(f"mmfusion: error: {error}", file=sys.stderr)
        code = 2
    out, err = capsys.readouterr()
    return code, out, err


def test_audit_verify_ok_and_problem(tmp_path, capsys):
    path = tmp_path / "audit.log"
    with AuditLog(path, max_bytes=2048) as audit:
        for i in range(30):
            audit.append({"kind": "call", "rpc": "Inspect", "result": f"ok {i}"})
    files = [str(p) for p in rotated_paths(path)]
    assert run(["audit", "verify", *files], capsys) == (0, "ok: 30 records\n", "")

    lines = path.read_text().splitlines(keepends=True)
    del lines[1]
    path.write_text("".join(lines))
    code, out, err = run(["audit", "verify", *files], capsys)
    assert code == 1 and err == ""
    assert out.count("\n") == 1 and f"{path}:2: records removed: seq " in out


def test_audit_verify_missing_file_is_a_usage_error(tmp_path, capsys):
    code, out, err = run(["audit", "verify", str(tmp_path / "absent.log")], capsys)
    assert code == 2 and out == "" and "absent.log' does not exist" in err and "Traceback" not in err


def test_keys_generate_and_rotate_with_rewrap(tmp_path, capsys):
    key_file = tmp_path / "keys.json"
    code, out, _ = run(["keys", "generate", str(key_file)], capsys)
    assert code == 0 and "active key k1" in out
    assert key_file.stat().st_mode & 0o777 == 0o600
    code, _, err = run(["keys", "generate", str(key_file)], capsys)
    assert code == 2 and "already exists" in err

    secret = tmp_path / "result.bin"
    KeyStore.from_file(key_file).encrypt_file(b"payload", secret)
    code, out, _ = run(["keys", "rotate", str(key_file), "--rewrap", str(secret)], capsys)
    assert code == 0 and "active key is now k2" in out and "rewrapped 1 of 1 files" in out
    keystore = KeyStore.from_file(key_file)
    assert json.loads(key_file.read_text())["active"] == "k2"
    assert KeyStore({"k2": keystore.keys["k2"]}, "k2").decrypt_file(secret) == b"payload"


def test_keys_rotate_missing_file(tmp_path, capsys):
    code, out, err = run(["keys", "rotate", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "none.json' does not exist" in err and err.count("\n") == 1


def test_manifest_write_and_verify(tmp_path, capsys):
    (tmp_path / "weights.safetensors").write_bytes(b"\x00" * 64)
    code, out, _ = run(["manifest", "write", str(tmp_path)], capsys)
    assert code == 0 and out.strip().endswith("manifest.json")
    assert run(["manifest", "verify", str(tmp_path)], capsys)[:2] == (
        0,
        f"ok: 1 files match {tmp_path}/manifest.json\n",
    )
    (tmp_path / "weights.safetensors").write_bytes(b"\x01" * 64)
    code, out, err = run(["manifest", "verify", str(tmp_path)], capsys)
    assert code == 2 and "'weights.safetensors' does not match its sha256" in err


def test_subcommand_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["keys"], capsys)
    assert exit_info.value.code == 2
