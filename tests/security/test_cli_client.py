"""`mmfusion inspect / stream / audio` against real loopback servers, plain and with API keys."""

from __future__ import annotations

import json

import pytest

from mmfusion.cli.main import main
from mmfusion.serving import build_server
from tests.security.conftest import API_KEYS, auth_config
from tests.test_pipeline import tiny_model


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    folder = tiny_model(tmp_path_factory.mktemp("cli-client") / "tiny")
    with build_server([folder]) as running:
        yield running, folder


def test_inspect_stream_and_audio_commands(plain_server, capsys):
    server, folder = plain_server
    address = f"127.0.0.1:{server.port}"
    assert (
        main(
            [
                "inspect",
                str(folder / "red.png"),
                str(folder / "blue.png"),
                "--server",
                address,
                "--model",
                "tiny",
                "--json",
            ]
        )
        == 0
    )
    verdicts = [json.loads(line)["verdict"] for line in capsys.readouterr().out.splitlines()]
    assert verdicts == ["red", "blue"]

    frames = folder / "frames"
    frames.mkdir()
    for index, name in enumerate(["red.png", "blue.png", "red.png"]):
        (frames / f"{index:02d}.png").write_bytes((folder / name).read_bytes())
    assert main(["stream", str(frames), "--server", address, "--model", "tiny", "--fps", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].split()[0] for line in out[:3]] == ["red", "blue", "red"]
    assert out[-1].startswith("3 of 3 frames answered, 0 dropped")

    assert main(["audio", str(folder / "red.png"), "--server", address, "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmfusion: error: INVALID_ARGUMENT: audio:") and "not decodable audio" in err
    assert err.count("\n") == 1


def test_client_commands_send_api_keys(security_files, security_models, capsys, monkeypatch):
    with build_server(
        [security_models / "tiny"], auth=auth_config(security_files), policy_path=security_files["policy"]
    ) as running:
        address = f"127.0.0.1:{running.port}"
        image = str(security_models / "tiny" / "red.png")
        assert main(["inspect", image, "--server", address, "--model", "tiny"]) == 2
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert (
            main(["inspect", image, "--server", address, "--model", "tiny", "--json", "--api-key", API_KEYS["admin"]])
            == 0
        )
        assert json.loads(capsys.readouterr().out)["verdict"] == "red"
        monkeypatch.setenv("MMFUSION_API_KEY", API_KEYS["operator"])  # operators may only use pcb-* models
        assert main(["inspect", image, "--server", address, "--model", "tiny"]) == 2
        assert "PERMISSION_DENIED" in capsys.readouterr().err


def test_client_tls_flags_need_a_ca(capsys):
    assert main(["inspect", "x.png", "--tls-client-cert", "c.pem"]) == 2
    assert "need --tls-ca" in capsys.readouterr().err
