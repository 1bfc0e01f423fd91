"""The service half of `mmfusion demo`: a real gRPC server on loopback, the demo cameras and a clip."""

from __future__ import annotations

import time
from pathlib import Path

from mmfusion.demo.cameras import CAMERA_MODELS, camera_section

AUDIO_MODEL = "speech-transcribe"


def analyze_clip(client, clip: Path) -> None:
    """Send one clip through AnalyzeAudio in chunks and print its transcript."""
    print(f"7. call audio: {clip.name} -> AnalyzeAudio ({AUDIO_MODEL})")
    started = time.perf_counter()
    result = client.analyze_audio(AUDIO_MODEL, clip)
    words = result.transcript.words
    print(
        f'   "{result.transcript.text}" [{result.transcript.language}], {len(words)} timed words, '
        f"{time.perf_counter() - started:.1f} s"
    )


def run_service_demo(samples: Path, out_dir: Path) -> None:
    """Start the server on a free loopback port, run the cameras (and their live page) and the clip, stop it."""
    from mmfusion.client import InspectionClient
    from mmfusion.serving import build_server

    started = time.perf_counter()
    server = build_server([*CAMERA_MODELS, AUDIO_MODEL], port=0).start()
    address = f"127.0.0.1:{server.port}"
    print(
        f"gRPC server on {address} with {', '.join(server.models.loaded_names())} "
        f"(started in {time.perf_counter() - started:.1f} s)"
    )
    try:
        camera_section(lambda: InspectionClient(address, timeout=None), samples, out_dir)
        print()
        with InspectionClient(address) as client:
            client.wait_ready()
            analyze_clip(client, next(iter(sorted(samples.glob("*.wav")))))
    finally:
        server.stop(grace=5.0)
    print("server stopped cleanly")
