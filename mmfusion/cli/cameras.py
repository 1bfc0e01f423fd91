"""`mmfusion cameras CONFIG.yaml`: run cameras against a server; record defects, serve metrics and the live page."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from mmfusion.cli.credentials import add_credential_options, client_options
from mmfusion.logs import user_warning
from mmfusion.types import InputError


def _view_auth(args: argparse.Namespace):
    """The live page's authentication from the same flags as `serve` (API key file, JWT, policy); None: open."""
    from mmfusion.cameras.view.auth import ViewAuth
    from mmfusion.security.auth import DEFAULT_MAX_TOKEN_LIFETIME_S, AuthConfig, JwtConfig
    from mmfusion.security.rbac import PolicyStore

    jwt_flags = args.jwt_secret_env or args.jwt_public_key
    if (args.jwt_audience or args.jwt_issuer or args.jwt_no_audience) and not jwt_flags:
        raise InputError("--jwt-audience/--jwt-issuer/--jwt-no-audience: need --jwt-secret-env or --jwt-public-key")
    jwt = None
    if jwt_flags:
        jwt = JwtConfig.from_options(
            args.jwt_secret_env,
            args.jwt_public_key,
            args.jwt_audience,
            args.jwt_issuer,
            max_lifetime_s=DEFAULT_MAX_TOKEN_LIFETIME_S,
            require_audience=not args.jwt_no_audience,
        )
    auth = AuthConfig(args.api_keys, jwt) if args.api_keys or jwt is not None else None
    if args.policy and auth is None:
        raise InputError(f"--policy {args.policy}: needs --api-keys or a JWT flag, so that viewers have roles")
    return ViewAuth(auth, PolicyStore(args.policy) if args.policy else None)


def _check_view_exposure(args: argparse.Namespace, host: str, authenticated: bool) -> None:
    """A page beyond loopback needs TLS and authentication, /metrics stays on loopback; or --insecure."""
    from mmfusion.security.network import is_loopback

    if (args.view_tls_cert is None) != (args.view_tls_key is None):
        raise InputError("--view-tls-cert and --view-tls-key: give both")
    problems = []
    if not args.no_view and not is_loopback(host):
        missing = [
            need
            for need, given in (
                ("TLS (--view-tls-cert/--view-tls-key)", args.view_tls_cert),
                ("authentication (--api-keys or a JWT flag)", authenticated),
            )
            if not given
        ]
        if missing:
            problems.append(f"view host {host} is not loopback: it needs {' and '.join(missing)}")
    if args.metrics_port is not None and not is_loopback(args.metrics_host):
        problems.append(f"--metrics-host {args.metrics_host} is not loopback: /metrics has no TLS and no auth")
    if problems and not args.insecure:
        raise InputError(f"{'; '.join(problems)}; or pass --insecure")
    if problems:
        user_warning(logging.getLogger("mmfusion.cameras"), f"--insecure: {'; '.join(problems)}")


def _connector(args: argparse.Namespace, target: str, local: bool):
    """A function that opens a client to the server with the client flags (credentials, TLS)."""
    from mmfusion.client import InspectionClient

    options = {} if local else client_options(args)  # checked now: a flag error ends the command at once
    return lambda: InspectionClient(target, timeout=None, **options)


def _summary(system, elapsed: float) -> str:
    lines = []
    for name, camera in system.cameras.items():
        reader, stream = camera.reader.stats, camera.stream.stats
        lines.append(
            f"  {name}: {stream.answered} judged ({stream.answered / max(elapsed, 1e-9):.1f} fps), "
            f"{camera.reader.latest.dropped} dropped at the camera, {stream.server_dropped} by the server, "
            f"{reader.reconnects} reconnects, {stream.errors} frame errors"
            + (
                f"; last error: {reader.last_error or stream.last_error}"
                if reader.last_error or stream.last_error
                else ""
            )
        )
    if system.recorder is not None:
        files, size = system.recorder.usage
        lines.append(
            f"  {system.recorder.recorded} defects recorded in {system.recorder.folder} ({files} files, {size} bytes)"
        )
    return "\n".join(lines)


def _wait(duration: float | None) -> None:
    """Until SIGINT/SIGTERM, or `duration` seconds."""
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait(duration)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _cmd_cameras(args: argparse.Namespace) -> int:
    from mmfusion.cameras.config import load_cameras
    from mmfusion.cameras.system import CameraSystem
    from mmfusion.serving.memory import keep_heap_warm

    config = load_cameras(args.config)
    if args.record_folder:
        config = config.model_copy(update={"record": config.record.model_copy(update={"folder": args.record_folder})})
    view_host = args.view_host or config.view.host
    view_port = config.view.port if args.view_port is None else args.view_port
    auth = _view_auth(args)
    _check_view_exposure(args, view_host, auth.enabled)
    if args.duration is not None and not args.duration > 0:
        raise InputError(f"--duration {args.duration}: expected seconds > 0")
    keep_heap_warm()
    server = None
    if args.server is None:
        from mmfusion.serving import build_server

        models = list(dict.fromkeys(camera.model for camera in config.cameras))
        started = time.perf_counter()
        server = build_server(models, port=0, backend=args.backend).start()
        target = f"127.0.0.1:{server.port}"
        print(f"gRPC server on {target} with {', '.join(models)} ({time.perf_counter() - started:.1f} s)", flush=True)
    else:
        target = args.server
    system = CameraSystem(config, _connector(args, target, server is not None), record=not args.no_record)
    view_server = None
    try:
        system.start()
        print(f"{len(config.cameras)} cameras -> StreamInspect on {target}", flush=True)
        if args.metrics_port is not None:
            port = system.metrics.serve(args.metrics_port, args.metrics_host)
            print(f"camera metrics on http://{args.metrics_host}:{port}/metrics", flush=True)
        if not args.no_view:
            from mmfusion.cameras.view.app import LiveView
            from mmfusion.cameras.view.server import ViewServer

            view = LiveView(system.board, auth, config.view.max_fps, secure=args.view_tls_cert is not None)
            view_server = ViewServer(view, view_host, view_port, args.view_tls_cert, args.view_tls_key).start()
            print(f"live page on {view_server.url}/", flush=True)
        started = time.perf_counter()
        _wait(args.duration)
        elapsed = time.perf_counter() - started
    finally:
        if view_server is not None:
            view_server.stop()
        system.stop()
        if server is not None:
            server.stop(grace=2.0)
    print(f"stopped after {elapsed:.1f} s\n{_summary(system, elapsed)}", flush=True)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `cameras` on the `mmfusion` parser."""
    cameras = sub.add_parser(
        "cameras", help="run the cameras of a YAML file: StreamInspect, defect records, metrics, live page"
    )
    cameras.add_argument("config", help="camera file (YAML; see docs/cameras.md)")
    cameras.add_argument(
        "--server", default=None, help="HOST:PORT of a running server (default: start one on a free loopback port)"
    )
    cameras.add_argument("--backend", default=None, help="backend of the in-process server's models (no --server)")
    cameras.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: SIGINT)")
    cameras.add_argument(
        "--record-folder", default=None, help="record defects here (default: the file's record.folder)"
    )
    cameras.add_argument("--no-record", action="store_true", help="record no defects")
    cameras.add_argument("--metrics-port", type=int, default=None, help="serve per-camera Prometheus /metrics here")
    cameras.add_argument("--metrics-host", default="127.0.0.1")
    client = cameras.add_argument_group("client of --server (as `mmfusion stream`)")
    add_credential_options(client)
    client.add_argument("--tls-ca", metavar="FILE", help="connect with TLS, trusting this CA (PEM)")
    client.add_argument("--tls-client-cert", metavar="FILE", help="client certificate for mutual TLS")
    client.add_argument("--tls-client-key", metavar="FILE", help="client key for mutual TLS")
    view = cameras.add_argument_group("live page (the service's own API keys / JWT; open on loopback without them)")
    view.add_argument("--no-view", action="store_true", help="no live page")
    view.add_argument("--view-host", default=None, help="listen address (default: the file's view.host)")
    view.add_argument("--view-port", type=int, default=None, help="port, 0 = any free one (default: view.port)")
    view.add_argument("--view-tls-cert", metavar="FILE", help="serve the page over HTTPS with this certificate")
    view.add_argument("--view-tls-key", metavar="FILE", help="... and this key")
    view.add_argument("--api-keys", metavar="FILE", help="owner-only API key file (`mmfusion api-keys add`)")
    view.add_argument("--jwt-secret-env", metavar="VAR", help="accept HS256 JWTs signed with the secret in $VAR")
    view.add_argument("--jwt-public-key", metavar="FILE", help="accept RS256 JWTs verified with this PEM public key")
    view.add_argument("--jwt-audience", help="required 'aud' claim")
    view.add_argument("--jwt-no-audience", action="store_true", help="accept tokens without an 'aud' claim")
    view.add_argument("--jwt-issuer", help="required 'iss' claim")
    view.add_argument(
        "--policy", metavar="FILE", help="RBAC policy: a viewer's role must be in it; models: filter tiles"
    )
    view.add_argument(
        "--insecure", action="store_true", help="allow a page or /metrics beyond loopback without TLS/auth"
    )
    cameras.set_defaults(run=_cmd_cameras)
