"""Clients keep credentials off plaintext networks and off the command line (--api-key-file, warnings)."""

from __future__ import annotations

import json

import pytest

from mmfusion.cli.main import main
from mmfusion.client import InspectionClient, target_hosts
from mmfusion.serving import build_server
from tests.security.conftest import API_KEYS, auth_config


@pytest.mark.parametrize(
    ("target", "hosts"),
    [
        ("127.0.0.1:50051", ["127.0.0.1"]),
        ("[::1]:50051", ["::1"]),
        ("localhost:50051", ["localhost"]),
        ("dns:///inspect.example:443", ["inspect.example"]),
        ("dns://8.8.8.8/inspect.example:443", ["inspect.example"]),
        ("ipv4:127.0.0.1:1,10.0.0.7:1", ["127.0.0.1", "10.0.0.7"]),
        ("unix:/run/mmfusion.sock", []),
    ],
)
def test_target_hosts(target, hosts):
    assert target_hosts(target) == hosts


@pytest.mark.parametrize(
    "target", ["10.0.0.7:50051", "inspect.example:50051", "[::]:50051", "ipv4:127.0.0.1:1,10.0.0.7:1"]
)
@pytest.mark.parametrize("secret", [{"api_key": "k"}, {"token": "t"}])
def test_credentials_are_not_sent_in_plaintext_to_another_machine(target, secret):
    with pytest.raises(ValueError) as refused:
        InspectionClient(target, **secret)
    message = str(refused.value)
    assert message.startswith(f"server {target}: refusing to send ")
    assert "--tls-ca" in message and "insecure_credentials=True" in message and "--insecure-credentials" in message
    InspectionClient(target, insecure_credentials=True, **secret).close()  # the explicit opt-in
    InspectionClient(target).close()  # no credentials: nothing to leak


@pytest.mark.parametrize("target", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "unix:/tmp/x.sock"])
def test_credentials_may_go_in_plaintext_to_this_machine(target):
    InspectionClient(target, api_key="k").close()


def test_credentials_may_go_over_tls_to_another_machine(tmp_path):
    import grpc

    from mmfusion.security.tls import make_dev_certificates

    certs = make_dev_certificates(tmp_path)
    credentials = grpc.ssl_channel_credentials(certs.ca_cert.read_bytes())
    InspectionClient("10.0.0.7:50051", api_key="k", credentials=credentials).close()


def test_cli_refuses_plaintext_credentials_to_another_machine(tmp_path, capsys):
    key_file = tmp_path / "api-key"
    key_file.write_text("k")
    key_file.chmod(0o600)
    assert main(["inspect", "x.png", "--server", "10.0.0.7:50051", "--api-key-file", str(key_file)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mmfusion: error: server 10.0.0.7:50051: refusing to send an API key over a plaintext")
    assert error.count("\n") == 1 and "--insecure-credentials" in error
    assert main(["inspect", "x.png", "--server", "10.0.0.7:50051", "--token", "t"]) == 2
    assert "refusing to send a token" in capsys.readouterr().err.splitlines()[-1]


@pytest.fixture(scope="module")
def keyed_server(security_files, security_models):
    with build_server([security_models / "tiny"], auth=auth_config(security_files)) as running:
        yield f"127.0.0.1:{running.port}", str(security_models / "tiny" / "red.png")


def test_cli_reads_the_api_key_from_an_owner_only_file(keyed_server, tmp_path, capsys):
    address, image = keyed_server
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEYS["admin"] + "\n")
    key_file.chmod(0o600)
    argv = ["inspect", image, "--server", address, "--model", "tiny", "--json"]
    assert main([*argv, "--api-key-file", str(key_file)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["verdict"] == "red" and captured.err == ""
    key_file.chmod(0o644)
    assert main([*argv, "--api-key-file", str(key_file)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--api-key-file {key_file}: mode 0644" in error and "chmod 600" in error
    assert main([*argv, "--api-key-file", str(key_file), "--api-key", "x"]) == 2
    assert "--api-key and --api-key-file" in capsys.readouterr().err


def test_cli_warns_about_an_api_key_on_the_command_line(keyed_server, capsys):
    address, image = keyed_server
    argv = ["inspect", image, "--server", address, "--model", "tiny", "--json", "--api-key", API_KEYS["admin"]]
    assert main(argv) == 0
    error = capsys.readouterr().err
    assert error.startswith("mmfusion: WARNING: --api-key on the command line is visible to other users")
    assert "--api-key-file FILE or $MMFUSION_API_KEY" in error
