"""Service subcommands of `mmfusion`: serve, inspect, stream, audio (a file, or a live call with --live)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

from mmfusion.cli.audio import DEFAULT_CALL_MODEL
from mmfusion.cli.credentials import add_credential_options, client_options
from mmfusion.types import InputError

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_IMAGE_MODEL = "pcb-inspect"
DEFAULT_AUDIO_MODEL = "speech-transcribe"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _print_result(result, as_json: bool) -> None:
    from mmfusion.client import to_dict

    if as_json:
        print(json.dumps(to_dict(result)))
        return
    scores = ", ".join(f"{label} {score:.2f}" for label, score in sorted(result.scores.items()))
    line = f"{result.model}: {result.verdict or '-'}"
    if scores:
        line += f" ({scores})"
    if result.flags:
        line += f" flags={list(result.flags)}"
    print(line)
    if "call" in result.heads and result.heads["call"].kind == "call_analysis":
        from mmfusion.calls.render import render_call

        print(render_call(to_dict(result.heads["call"])["extra"]))
    elif result.transcript.text:
        print(f'  transcript [{result.transcript.language}]: "{result.transcript.text}"')


def _cmd_inspect(args: argparse.Namespace) -> int:

    with _connect(args) as client:
        for path in args.files:
            if not Path(path).is_file():
                raise InputError(f"image file {path!r} does not exist")
            reference = Path(args.reference) if args.reference else None
            if reference is not None and not reference.is_file():
                raise InputError(f"reference image file {args.reference!r} does not exist")
            result = client.inspect(args.model, image=Path(path), text=args.text, reference=reference)
            if not args.json:
                print(f"{path}: ", end="")
            _print_result(result, args.json)
    return 0


def _stream_images(source: Path) -> list:
    """Frames of a video file (RGB arrays) or the image files of a folder in name order."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"folder {str(source)!r} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    from mmfusion.media import read_video_frames

    return read_video_frames(source)


def _paced(frames: Iterator, fps: float | None) -> Iterator:
    """Yield frames no faster than `fps` (as fast as possible when None)."""
    started = time.perf_counter()
    for index, frame in enumerate(frames):
        if fps:
            delay = started + index / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield frame


def _cmd_stream(args: argparse.Namespace) -> int:
    from mmfusion.client import frames_from_images, to_dict

    source = Path(args.source)
    if not source.exists():
        raise InputError(f"stream source {args.source!r} does not exist; expected a video file or a folder of images")
    if args.fps is not None and args.fps <= 0:
        raise InputError(f"--fps {args.fps}: expected a positive frame rate")
    images = _stream_images(source)
    frames = _paced(frames_from_images(images, stream_id=args.stream_id, model=args.model), args.fps)
    answered = skipped = 0
    started = time.perf_counter()
    with _connect(args) as client:
        for frame_result in client.stream(frames):
            answered += 1
            skipped += len(frame_result.skipped_sequence_numbers)
            if args.json:
                print(json.dumps(to_dict(frame_result)))
                continue
            result = frame_result.result
            status = frame_result.error.message if frame_result.HasField("error") else result.verdict
            score = f" {result.verdict_score:.2f}" if frame_result.HasField("result") else ""
            dropped = f" (dropped {list(frame_result.skipped_sequence_numbers)})" if skipped else ""
            print(f"frame {frame_result.sequence_number:4d}: {status}{score}{dropped}")
    elapsed = time.perf_counter() - started
    summary = {
        "frames_sent": len(images),
        "answered": answered,
        "dropped": skipped,
        "seconds": round(elapsed, 3),
        "achieved_fps": round(answered / elapsed, 2) if elapsed else 0.0,
    }
    print(
        json.dumps(summary)
        if args.json
        else f"{answered} of {len(images)} frames answered, {skipped} dropped, "
        f"{summary['achieved_fps']} fps over {elapsed:.1f} s"
    )
    return 0


def _cmd_audio(args: argparse.Namespace) -> int:

    if not Path(args.file).is_file():
        raise InputError(f"audio file {args.file!r} does not exist")
    if args.live:
        return _live_call(args)
    if args.speed is not None:
        raise InputError(f"--speed {args.speed:g}: only with --live (it paces a live call)")
    args.server = args.server or DEFAULT_SERVER
    with _connect(args) as client:
        model = args.model or DEFAULT_AUDIO_MODEL
        _print_result(client.analyze_audio(model, Path(args.file), text=args.text or ""), args.json)
    return 0


def _live_call(args: argparse.Namespace) -> int:
    """Play a file through StreamCall at real time (times --speed); print each segment as it comes, then the call.

    Without --server, the model runs in a server of this process on a free loopback port.
    """
    from mmfusion.calls.decode import decode_call_audio

    if args.speed is not None and not args.speed > 0:
        raise InputError(f"--speed {args.speed:g}: expected a factor > 0 (1 = real time, 4 = four times faster)")
    if args.text:
        raise InputError("--text: a live call carries no text; leave it out with --live")
    audio = decode_call_audio(Path(args.file), name=f"audio file {args.file!r}")  # channels kept: agent, customer
    model = args.model or DEFAULT_CALL_MODEL
    if args.server:
        with _connect(args) as client:
            _play_call(client, model, audio, args.speed or 1.0, args.json)
        return 0
    from mmfusion.serving import build_server

    server = build_server([model], port=0).start()
    args.server = f"127.0.0.1:{server.port}"
    try:
        with _connect(args) as client:
            _play_call(client, model, audio, args.speed or 1.0, args.json)
    finally:
        server.stop(grace=5.0)
    return 0


def _play_call(client, model: str, audio, speed: float, as_json: bool) -> None:
    from mmfusion.calls.render import segment_line
    from mmfusion.client import CALL_CHUNK_SECONDS, paced, pcm16_chunks, to_dict
    from mmfusion.media import SAMPLE_RATE

    chunks = paced(pcm16_chunks(audio.channels, SAMPLE_RATE), CALL_CHUNK_SECONDS, speed)
    for update in client.stream_call(model, chunks, sample_rate=SAMPLE_RATE, channels=audio.channel_count):
        if update.HasField("summary"):
            _print_result(update.summary, as_json)
        elif as_json:
            print(json.dumps(to_dict(update), ensure_ascii=False), flush=True)
        else:
            flags = f"  flags: {', '.join(update.segment.flags)}" if update.segment.flags else ""
            line = segment_line(to_dict(update.segment))
            print(f"at {update.received_seconds:6.1f} s  {line}{flags}", flush=True)


def _connect(args: argparse.Namespace):
    """An InspectionClient from the shared client flags (server, API key or token, TLS)."""
    from mmfusion.client import InspectionClient

    return InspectionClient(args.server, **client_options(args))


def _client_options() -> argparse.ArgumentParser:
    """Flags every client subcommand shares: where the server is, how to authenticate, output format."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--server", default=DEFAULT_SERVER, help=f"HOST:PORT (default {DEFAULT_SERVER})")
    add_credential_options(options)
    options.add_argument("--tls-ca", metavar="FILE", help="connect with TLS, trusting this CA (PEM)")
    options.add_argument("--tls-client-cert", metavar="FILE", help="client certificate for mutual TLS")
    options.add_argument("--tls-client-key", metavar="FILE", help="client key for mutual TLS")
    options.add_argument("--json", action="store_true", help="JSON output")
    return options


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the client commands inspect, stream and audio on the `mmfusion` parser."""
    client_options = _client_options()
    inspect = sub.add_parser("inspect", parents=[client_options], help="send images to a server (Inspect)")
    inspect.add_argument("files", nargs="+", help="image files")
    inspect.add_argument("--model", default=DEFAULT_IMAGE_MODEL)
    inspect.add_argument("--text", default=None, help="a note sent with every image")
    inspect.add_argument("--reference", default=None, help="golden template sent with every image (template models)")
    inspect.set_defaults(run=_cmd_inspect)

    stream = sub.add_parser(
        "stream", parents=[client_options], help="stream a video or a folder of images (StreamInspect)"
    )
    stream.add_argument("source", help="video file or folder of images")
    stream.add_argument("--model", default=DEFAULT_IMAGE_MODEL)
    stream.add_argument("--fps", type=float, default=None, help="send at this rate (default: as fast as possible)")
    stream.add_argument("--stream-id", default="camera-0")
    stream.set_defaults(run=_cmd_stream)

    audio = sub.add_parser(
        "audio",
        parents=[client_options],
        help="send an audio file to a server (AnalyzeAudio), or play it as a live call (--live: StreamCall)",
    )
    audio.add_argument("file", help="audio file (WAV, FLAC, MP3, ...)")
    audio.add_argument("--model", default=None, help=f"default {DEFAULT_AUDIO_MODEL}; with --live {DEFAULT_CALL_MODEL}")
    audio.add_argument("--text", default=None)
    audio.add_argument(
        "--live",
        action="store_true",
        help="play the file at real time through StreamCall (channels kept) and print each segment as it ends; "
        "without --server, in a server of this process on a free loopback port",
    )
    audio.add_argument("--speed", type=float, default=None, help="with --live: play this many times faster")
    audio.set_defaults(run=_cmd_audio, server=None)  # a plain audio call without --server: the default server
