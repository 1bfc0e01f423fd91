"""Service subcommands of `mmfusion`: serve, inspect, stream, audio."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from mmfusion.types import InputError

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_IMAGE_MODEL = "pcb-inspect"
DEFAULT_AUDIO_MODEL = "speech-transcribe"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _security_options(args: argparse.Namespace) -> dict:
    """build_server's security keywords from the serve flags; flags that need each other are checked here."""
    from mmfusion.security.auth import AuthConfig, JwtConfig
    from mmfusion.security.limits import DEFAULT_MAX_STREAMS, RateLimit

    jwt_flags = args.jwt_secret_env or args.jwt_public_key
    if (args.jwt_audience or args.jwt_issuer) and not jwt_flags:
        raise InputError("--jwt-audience/--jwt-issuer: need --jwt-secret-env or --jwt-public-key")
    jwt = (
        JwtConfig.from_options(args.jwt_secret_env, args.jwt_public_key, args.jwt_audience, args.jwt_issuer)
        if jwt_flags
        else None
    )
    auth = AuthConfig(args.api_keys, jwt) if args.api_keys or jwt is not None else None
    if args.policy and auth is None:
        raise InputError(f"--policy {args.policy}: needs --api-keys or a JWT flag, so that callers have roles")
    if (args.burst is not None or args.max_streams is not None) and args.rate_limit is None:
        raise InputError("--burst/--max-streams: need --rate-limit")
    rate_limit = None
    if args.rate_limit is not None:
        max_streams = args.max_streams if args.max_streams is not None else DEFAULT_MAX_STREAMS
        rate_limit = RateLimit(args.rate_limit, args.burst, max_streams)
    if (args.tls_cert is None) != (args.tls_key is None) or (args.client_ca and args.tls_cert is None):
        raise InputError("--tls-cert and --tls-key: give both (and --client-ca only with them)")
    if (args.audit_key_file or args.audit_key_env) and not args.audit_log:
        raise InputError("--audit-key-file/--audit-key-env: need --audit-log")
    cipher = None
    if args.audit_key_file or args.audit_key_env:
        from mmfusion.security.crypto import FieldCipher, KeyStore

        keystore = (
            KeyStore.from_file(args.audit_key_file) if args.audit_key_file else KeyStore.from_env(args.audit_key_env)
        )
        cipher = FieldCipher(keystore)
    credentials = None
    if args.tls_cert is not None:
        from mmfusion.security.tls import server_credentials

        credentials = server_credentials(args.tls_cert, args.tls_key, args.client_ca)
    return {
        "auth": auth,
        "policy_path": args.policy,
        "audit_path": args.audit_log,
        "audit_fsync": args.audit_fsync,
        "audit_cipher": cipher,
        "rate_limit": rate_limit,
        "server_credentials": credentials,
    }


def _rate(text: str) -> float:
    """`--rate-limit 20` or `20/s`: calls per second."""
    value = text[:-2] if text.endswith("/s") else text
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected calls per second, e.g. 20 or 20/s") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from mmfusion.serving import serve

    if args.cache_mb < 0:
        raise InputError(f"--cache-mb {args.cache_mb}: expected megabytes >= 0 (0 disables the cache)")
    security = _security_options(args)
    return serve(
        args.models,
        args.port,
        host=args.host,
        grace=args.grace,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        backend=args.backend,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        preferred_batch_sizes=tuple(args.preferred_batch_size),
        max_queue_size=args.max_queue_size,
        cache_bytes=int(args.cache_mb * 1024 * 1024),
        no_cache_models=args.no_cache_model,
        metrics_port=args.metrics_port,
        **security,
    )


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
    with _connect(args) as client:
        _print_result(client.analyze_audio(args.model, Path(args.file), text=args.text or ""), args.json)
    return 0


def _connect(args: argparse.Namespace):
    """An InspectionClient from the shared client flags (server, API key or token, TLS)."""
    from mmfusion.client import InspectionClient

    credentials = None
    if args.tls_ca:
        from mmfusion.security.tls import channel_credentials

        credentials = channel_credentials(args.tls_ca, args.tls_client_cert, args.tls_client_key)
    elif args.tls_client_cert or args.tls_client_key:
        raise InputError("--tls-client-cert/--tls-client-key need --tls-ca (the CA that signed the server)")
    api_key = args.api_key or os.environ.get("MMFUSION_API_KEY") or None
    token = args.token or os.environ.get("MMFUSION_TOKEN") or None
    return InspectionClient(args.server, api_key=api_key, token=None if api_key else token, credentials=credentials)


def _client_options() -> argparse.ArgumentParser:
    """Flags every client subcommand shares: where the server is, how to authenticate, output format."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--server", default=DEFAULT_SERVER, help=f"HOST:PORT (default {DEFAULT_SERVER})")
    options.add_argument("--api-key", default=None, help="API key (or env MMFUSION_API_KEY)")
    options.add_argument("--token", default=None, help="JWT bearer token (or env MMFUSION_TOKEN)")
    options.add_argument("--tls-ca", metavar="FILE", help="connect with TLS, trusting this CA (PEM)")
    options.add_argument("--tls-client-cert", metavar="FILE", help="client certificate for mutual TLS")
    options.add_argument("--tls-client-key", metavar="FILE", help="client key for mutual TLS")
    options.add_argument("--json", action="store_true", help="JSON output")
    return options


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register serve, inspect, stream and audio on the `mmfusion` parser."""
    serve = sub.add_parser("serve", help="serve models over gRPC until SIGTERM/SIGINT")
    serve.add_argument("models", nargs="*", help="model names in models/ or model folders")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--host", default="127.0.0.1", help="use [::] to listen on every interface")
    serve.add_argument("--max-message-mb", type=int, default=64)
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to finish in-flight work on shutdown")
    serve.add_argument(
        "--backend", default=None, help="torch | onnxruntime | tensorrt for every model (default: their runtime:)"
    )
    serve.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    batching = serve.add_argument_group("batching (every model; a per-model config block should follow)")
    batching.add_argument("--max-batch-size", type=int, default=8, help="requests per backend call")
    batching.add_argument(
        "--max-queue-delay-us", type=int, default=2000, help="longest wait for a batch to fill, in microseconds"
    )
    batching.add_argument(
        "--preferred-batch-size",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="dispatch as soon as N requests wait (repeatable)",
    )
    batching.add_argument(
        "--max-queue-size", type=int, default=256, help="requests waiting per model before RESOURCE_EXHAUSTED"
    )
    caching = serve.add_argument_group("result cache (Inspect)")
    caching.add_argument("--cache-mb", type=float, default=64, help="result cache size in MiB; 0 disables it")
    caching.add_argument(
        "--no-cache-model", action="append", default=[], metavar="NAME", help="never cache this model (repeatable)"
    )
    auth = serve.add_argument_group("authentication and authorisation (off unless a flag is given)")
    auth.add_argument("--api-keys", metavar="FILE", help="YAML file of API keys: keys: [{id, role, hash}]")
    auth.add_argument("--jwt-secret-env", metavar="VAR", help="accept HS256 JWTs signed with the secret in $VAR")
    auth.add_argument("--jwt-public-key", metavar="FILE", help="accept RS256 JWTs verified with this PEM public key")
    auth.add_argument("--jwt-audience", help="required 'aud' claim")
    auth.add_argument("--jwt-issuer", help="required 'iss' claim")
    auth.add_argument("--policy", metavar="FILE", help="RBAC policy YAML (roles -> rpcs, models); SIGHUP reloads")
    auth.add_argument("--audit-log", metavar="FILE", help="append a hash-chained audit event per call here")
    auth.add_argument(
        "--audit-fsync",
        choices=("always", "never"),
        default="always",
        help="fsync the audit log after every event (default) or leave flushing to the OS (faster)",
    )
    auth.add_argument("--audit-key-file", metavar="FILE", help="encrypt sensitive audit fields with this key file")
    auth.add_argument("--audit-key-env", metavar="VAR", help="... or with the base64 master key in $VAR")
    limits = serve.add_argument_group("per-caller limits")
    limits.add_argument("--rate-limit", type=_rate, metavar="R/s", help="calls per second per caller")
    limits.add_argument("--burst", type=int, metavar="N", help="calls a caller may make at once (default: R)")
    limits.add_argument("--max-streams", type=int, metavar="N", help="open streaming calls per caller (default 8)")
    tls = serve.add_argument_group("TLS (plaintext unless given)")
    tls.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    tls.add_argument("--client-ca", metavar="FILE", help="require client certificates signed by this CA (mutual TLS)")
    serve.set_defaults(run=_cmd_serve)

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

    audio = sub.add_parser("audio", parents=[client_options], help="send an audio file to a server (AnalyzeAudio)")
    audio.add_argument("file", help="audio file (WAV, FLAC, MP3, ...)")
    audio.add_argument("--model", default=DEFAULT_AUDIO_MODEL)
    audio.add_argument("--text", default=None)
    audio.set_defaults(run=_cmd_audio)
