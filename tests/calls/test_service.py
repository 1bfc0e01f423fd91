"""The call-centre model through a real gRPC server: speakers, labels, flags, metrics; the CLI prints them."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.cli.main import main
from mmfusion.client import InspectionClient, ServerError, to_dict
from mmfusion.repository.folder import models_root
from mmfusion.serving import build_server
from tests.calls.conftest import CLIP, wav_bytes
from tests.calls.test_transcription import second_clip, stereo_call


@pytest.fixture(scope="module")
def server():
    with build_server(["call-centre"], port=0, model_root=models_root()) as running:
        yield running


@pytest.fixture(scope="module")
def call_wav(tmp_path_factory, clip) -> bytes:
    data = wav_bytes(stereo_call(clip, second_clip(CLIP), 6.0))
    path = tmp_path_factory.mktemp("call") / "call.wav"
    path.write_bytes(data)
    return path


def test_analyze_audio_returns_speakers_labels_flags_metrics(server, call_wav, capsys):
    with InspectionClient(f"127.0.0.1:{server.port}", timeout=120) as client:
        client.wait_ready(10)
        result = client.analyze_audio("call-centre", call_wav, chunk_bytes=50_000)
        with pytest.raises(ServerError, match="INVALID_ARGUMENT: audio.*not decodable audio"):
            client.analyze_audio("call-centre", b"definitely not audio" * 10)
    call = to_dict(result.heads["call"])["extra"]
    assert call["speakers"] == ["agent", "customer"]
    assert {s["speaker"] for s in call["segments"]} == {"agent", "customer"}
    assert all(s["labels"]["intent"]["label"] and s["words"] for s in call["segments"])
    assert result.heads["intent"].label and set(result.heads["emotion"].scores) >= {"neutral", "angry"}
    assert "missing:recording-disclosure" in result.flags and "missing:greeting" in result.flags
    assert call["metrics"]["overlap_count"] == 1 and call["metrics"]["interruptions"]["customer"] == 1
    assert "dashwood" in result.transcript.text.lower() and result.transcript.language == "en"
    words = [w.start for w in result.transcript.words]
    assert words == sorted(words) and result.timings.compute_ms > 0

    assert main(["audio", str(call_wav), "--server", f"127.0.0.1:{server.port}", "--model", "call-centre"]) == 0
    printed = capsys.readouterr().out
    assert "agent   :" in printed or "agent:" in printed.replace(" ", "")
    assert "customer" in printed and "flags: missing:greeting" in printed and "overlaps 1" in printed
    assert np.isfinite(call["metrics"]["talk_ratio"]["agent"])
