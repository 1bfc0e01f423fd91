"""The service half of `mmfusion demo`: a real gRPC server on loopback, a camera stream and a clip."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from mmfusion.media import decode_image

STREAM_MODEL = "pcb-inspect"
CAMERA_FPS = 15.0  # the rate a camera sends at; the service must keep up or drop (and say so)
AUDIO_MODEL = "speech-transcribe"


def annotate(image: np.ndarray, frame_result) -> np.ndarray:
    """Draw the verdict, its score and any boxes on a copy of an RGB frame; returns BGR for cv2."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    result = frame_result.result
    defect = result.verdict not in ("", "pass", "ok", "good")
    colour = (0, 0, 255) if defect else (0, 160, 0)
    for box in result.boxes:
        cv2.rectangle(canvas, (int(box.x1), int(box.y1)), (int(box.x2), int(box.y2)), colour, 2)
    label = f"#{frame_result.sequence_number} {result.verdict or frame_result.error.message} {result.verdict_score:.2f}"
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 34), (255, 255, 255), -1)
    cv2.putText(canvas, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.8, colour, 2, cv2.LINE_AA)
    return canvas


def paced(frames, fps: float):
    """Yield frames no faster than `fps`, like a camera."""
    started = time.perf_counter()
    for index, frame in enumerate(frames):
        time.sleep(max(0.0, started + index / fps - time.perf_counter()))
        yield frame


def stream_frames(client, frames_dir: Path, out_dir: Path) -> None:
    """Send every frame in `frames_dir` on one StreamInspect call; print verdicts, write annotated frames."""
    from mmfusion.client import frames_from_images
    from mmfusion.proto import inspection_pb2 as pb

    paths = sorted(frames_dir.glob("*.jpg"))
    images = [decode_image(path) for path in paths]
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"6. camera stream: {len(paths)} frames from {frames_dir.name}/ at {CAMERA_FPS:g} fps "
        f"-> StreamInspect ({STREAM_MODEL})"
    )
    started = time.perf_counter()
    answered = dropped = 0
    options = pb.StreamOptions(max_pending_frames=4)
    frames = frames_from_images(images, stream_id="demo-camera", model=STREAM_MODEL, options=options)
    for frame_result in client.stream(paced(frames, CAMERA_FPS)):
        answered += 1
        dropped += len(frame_result.skipped_sequence_numbers)
        index = frame_result.sequence_number
        cv2.imwrite(str(out_dir / f"frame_{index:04d}.jpg"), annotate(images[index], frame_result))
        result = frame_result.result
        skipped = frame_result.skipped_sequence_numbers
        skipped = f", dropped before it: {list(skipped)}" if skipped else ""
        print(f"   frame {index:2d} {paths[index].name:24s} -> {result.verdict} {result.verdict_score:.2f}{skipped}")
    elapsed = time.perf_counter() - started
    print("   (image-only verdicts here come from imprinted ImageNet features and are weak on small PCB defects;")
    print("    section 5 compares against the golden template instead, which is what finds them)")
    print(f"   {answered} answered, {dropped} dropped, {answered / elapsed:.1f} fps; annotated frames in {out_dir}")


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
    """Start the server on a free loopback port, run the stream and the clip, stop it cleanly."""
    from mmfusion.client import InspectionClient
    from mmfusion.serving import build_server

    started = time.perf_counter()
    server = build_server([STREAM_MODEL, AUDIO_MODEL], port=0).start()
    address = f"127.0.0.1:{server.port}"
    print(
        f"gRPC server on {address} with {', '.join(server.models.loaded_names())} "
        f"(started in {time.perf_counter() - started:.1f} s)"
    )
    try:
        with InspectionClient(address) as client:
            client.wait_ready()
            stream_frames(client, samples / "frames", out_dir)
            print()
            analyze_clip(client, next(iter(sorted(samples.glob("*.wav")))))
    finally:
        server.stop(grace=5.0)
    print("server stopped cleanly")
