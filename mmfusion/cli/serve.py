"""`mmfusion serve`: the service on a port, with its security, limits, batching and TLS front from flags."""

from __future__ import annotations

import argparse
import logging

from mmfusion.cli.log_options import add_log_options
from mmfusion.logs import user_warning
from mmfusion.types import InputError

LOG = logging.getLogger("mmfusion.serving")


def _security_options(args: argparse.Namespace) -> dict:
    """build_server's security keywords from the serve flags; flags that need each other are checked here."""
    from mmfusion.security.auth import DEFAULT_MAX_TOKEN_LIFETIME_S, AuthConfig, JwtConfig
    from mmfusion.security.limits import DEFAULT_MAX_STREAMS, FailureLimit, RateLimit

    jwt_flags = args.jwt_secret_env or args.jwt_public_key
    if (args.jwt_audience or args.jwt_issuer) and not jwt_flags:
        raise InputError("--jwt-audience/--jwt-issuer: need --jwt-secret-env or --jwt-public-key")
    if (args.jwt_no_audience or args.jwt_max_lifetime is not None) and not jwt_flags:
        raise InputError("--jwt-no-audience/--jwt-max-lifetime: need --jwt-secret-env or --jwt-public-key")
    if args.jwt_audience and args.jwt_no_audience:
        raise InputError(f"--jwt-audience {args.jwt_audience} and --jwt-no-audience: give one of them")
    jwt = (
        JwtConfig.from_options(
            args.jwt_secret_env,
            args.jwt_public_key,
            args.jwt_audience,
            args.jwt_issuer,
            max_lifetime_s=args.jwt_max_lifetime if args.jwt_max_lifetime is not None else DEFAULT_MAX_TOKEN_LIFETIME_S,
            require_audience=not args.jwt_no_audience,
        )
        if jwt_flags
        else None
    )
    if args.max_auth_failures is not None and not (args.api_keys or jwt is not None):
        raise InputError(f"--max-auth-failures {args.max_auth_failures}: needs --api-keys or a JWT flag")
    failures = FailureLimit(args.max_auth_failures) if args.max_auth_failures is not None else FailureLimit()
    auth = AuthConfig(args.api_keys, jwt, failure_limit=failures) if args.api_keys or jwt is not None else None
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
    audit = _audit_options(args)
    tls = None
    if args.tls_cert is not None:
        from mmfusion.security.tls import TlsFiles

        tls = TlsFiles.checked(args.tls_cert, args.tls_key, args.client_ca)
    _check_exposure(args, authenticated=auth is not None or args.client_ca is not None)
    return {
        "auth": auth,
        "policy_path": args.policy,
        **audit,
        "rate_limit": rate_limit,
        "tls": tls,
        "trusted_proxies": tuple(args.trusted_proxy),
    }


def _check_exposure(args: argparse.Namespace, authenticated: bool) -> None:
    """Listeners beyond loopback: gRPC needs TLS and authentication, /metrics is never protected; else --insecure."""
    from mmfusion.security.network import is_loopback, parse_networks

    parse_networks(args.trusted_proxy)  # a bad address is a usage error before anything loads
    problems = []
    if not is_loopback(args.host):
        needs = [("TLS (--tls-cert/--tls-key)", args.tls_cert is not None)]
        needs.append(("authentication (--api-keys, a JWT flag or --client-ca)", authenticated))
        missing = " and ".join(need for need, given in needs if not given)
        if missing:
            problems.append(f"--host {args.host} is not loopback: it needs {missing}")
    if args.metrics_port is not None and not is_loopback(args.metrics_host):
        problems.append(f"--metrics-host {args.metrics_host} is not loopback: /metrics has no TLS and no auth")
    if problems and not args.insecure:
        raise InputError(f"{'; '.join(problems)}; or pass --insecure to serve it anyway")
    if problems:
        user_warning(LOG, f"--insecure: {'; '.join(problems)}")


def _audit_options(args: argparse.Namespace) -> dict:
    """build_server's audit keywords from the serve flags: a keyed chain, unless --audit-unkeyed says otherwise."""
    keyed = bool(args.audit_key_file or args.audit_key_env)
    if keyed and not args.audit_log:
        raise InputError("--audit-key-file/--audit-key-env: need --audit-log")
    if (args.audit_unkeyed or args.audit_fail_closed or args.audit_new_segment) and not args.audit_log:
        raise InputError("--audit-unkeyed/--audit-fail-closed/--audit-new-segment: need --audit-log")
    if args.audit_log and keyed and args.audit_unkeyed:
        raise InputError("--audit-unkeyed: not with --audit-key-file/--audit-key-env")
    if args.audit_log and not keyed and not args.audit_unkeyed:
        raise InputError(
            f"--audit-log {args.audit_log}: needs --audit-key-file or --audit-key-env (its master key keys the "
            "hash chain and encrypts sensitive fields), or --audit-unkeyed for a log anyone who can write can rewrite"
        )
    cipher = None
    if keyed:
        from mmfusion.security.crypto import FieldCipher, KeyStore

        keystore = (
            KeyStore.from_file(args.audit_key_file) if args.audit_key_file else KeyStore.from_env(args.audit_key_env)
        )
        cipher = FieldCipher(keystore)
    return {
        "audit_path": args.audit_log,
        "audit_fsync": args.audit_fsync,
        "audit_cipher": cipher,
        "audit_fail_closed": args.audit_fail_closed,
        "audit_new_segment": args.audit_new_segment,
        "audit_node_id": _node_id(args.node_id),
    }


def _node_id(given: str | None) -> str:
    """--node-id, else the host name (a pod's name on Kubernetes): names this replica in its audit records."""
    import socket

    node = (given if given is not None else socket.gethostname()).strip()
    if not node or any(character.isspace() or not character.isprintable() for character in node):
        raise InputError(f"--node-id {given!r}: expected a name without spaces, e.g. the host or pod name")
    return node


def _rate(text: str) -> float:
    """`--rate-limit 20` or `20/s`: calls per second."""
    value = text[:-2] if text.endswith("/s") else text
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected calls per second, e.g. 20 or 20/s") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from mmfusion import tracing

    if args.cache_mb < 0:
        raise InputError(f"--cache-mb {args.cache_mb}: expected megabytes >= 0 (0 disables the cache)")
    security = _security_options(args)
    if not args.require_manifest:
        _warn_unverified_models()
    endpoint = args.otlp_endpoint or tracing.endpoint_from_environment()
    with tracing.configured(endpoint=endpoint) as traced:
        if traced:
            LOG.info("tracing: spans exported over OTLP/gRPC to %s", endpoint)
        return _serve(args, security)


def _serve(args: argparse.Namespace, security: dict) -> int:
    from mmfusion.serving import serve
    from mmfusion.serving.memory import keep_heap_warm

    keep_heap_warm()

    return serve(
        args.models,
        args.port,
        host=args.host,
        grace=args.grace,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        backend=args.backend,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        preferred_batch_sizes=None if args.preferred_batch_size is None else tuple(args.preferred_batch_size),
        max_queue_size=args.max_queue_size,
        cache_bytes=int(args.cache_mb * 1024 * 1024),
        no_cache_models=args.no_cache_model,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        http_port=args.http_port,
        require_manifest=args.require_manifest,
        **_thread_options(args),
        **security,
    )


def _thread_options(args: argparse.Namespace) -> dict:
    """build_server's worker, open-stream and stream time-limit keywords from the serve flags, checked."""
    counts = [("--workers", args.workers), ("--max-open-streams", args.max_open_streams)]
    if args.threads is not None:
        counts.append(("--threads", args.threads))
    for flag, count in counts:
        if count < 1:
            raise InputError(f"{flag} {count}: expected at least 1")
    timeouts = (
        ("--first-message-timeout", args.first_message_timeout),
        ("--stream-idle-timeout", args.stream_idle_timeout),
    )
    for flag, seconds in timeouts:
        if not seconds > 0:
            raise InputError(f"{flag} {seconds}: expected seconds > 0")
    return {
        "max_workers": args.workers,
        "max_open_streams": args.max_open_streams,
        "first_message_timeout_s": args.first_message_timeout,
        "stream_idle_timeout_s": args.stream_idle_timeout,
        "threads": args.threads,
    }


def _warn_unverified_models() -> None:
    """--no-require-manifest: tell stderr (a log line when logs are JSON) that unsigned folders load unverified."""
    message = (
        "--no-require-manifest: model folders without manifest.json load UNVERIFIED (their files are not "
        "checked against sha256 hashes); sign them with `mmfusion manifest write DIR` instead"
    )
    user_warning(LOG, message)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register serve on the `mmfusion` parser."""
    serve = sub.add_parser("serve", help="serve models over gRPC until SIGTERM/SIGINT")
    serve.add_argument("models", nargs="*", help="model names in models/ or model folders")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address; [::] listens on every interface and needs TLS and authentication (or --insecure)",
    )
    serve.add_argument("--max-message-mb", type=int, default=64)
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to finish in-flight work on shutdown")
    serve.add_argument(
        "--backend", default=None, help="auto | torch | onnxruntime | tensorrt for all models (default: their runtime:)"
    )
    serve.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    serve.add_argument(
        "--http-port",
        type=int,
        default=None,
        metavar="N",
        help="also serve KServe v2 over HTTP/REST on --host:N (off by default; Triton uses 8000); same auth, "
        "RBAC, audit and TLS as the gRPC port",
    )
    serve.add_argument(
        "--metrics-host", default="127.0.0.1", help="/metrics listen address (plaintext; beyond loopback: --insecure)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without TLS and authentication, or a non-loopback --metrics-host",
    )
    add_log_options(serve, inherit=True)
    serve.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="export OpenTelemetry traces (RPC, queue, batch, backend) over OTLP/gRPC, e.g. http://collector:4317 "
        "(default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT; none: tracing off)",
    )
    serve.add_argument(
        "--require-manifest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse model folders without a sha256 manifest.json (`mmfusion manifest write DIR`); default on",
    )
    batching = serve.add_argument_group(
        "batching: a flag given overrides that setting of every model; not given, each model's config.yaml "
        "serving: block decides, else the default shown"
    )
    batching.add_argument("--max-batch-size", type=int, default=None, help="requests per backend call (default 8)")
    batching.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None,
        help="longest wait for a batch to fill, in microseconds (default 2000)",
    )
    batching.add_argument(
        "--preferred-batch-size",
        type=int,
        action="append",
        default=None,
        metavar="N",
        help="dispatch as soon as N requests wait (repeatable; default none)",
    )
    batching.add_argument(
        "--max-queue-size",
        type=int,
        default=None,
        help="requests waiting per model before RESOURCE_EXHAUSTED (default 256)",
    )
    caching = serve.add_argument_group("result cache (Inspect)")
    caching.add_argument("--cache-mb", type=float, default=64, help="result cache size in MiB; 0 disables it")
    caching.add_argument(
        "--no-cache-model", action="append", default=[], metavar="NAME", help="never cache this model (repeatable)"
    )
    auth = serve.add_argument_group("authentication and authorisation (off unless a flag is given)")
    auth.add_argument(
        "--api-keys",
        metavar="FILE",
        help="owner-only YAML file of API keys (`mmfusion api-keys add`), re-read when it changes",
    )
    auth.add_argument("--jwt-secret-env", metavar="VAR", help="accept HS256 JWTs signed with the secret in $VAR")
    auth.add_argument("--jwt-public-key", metavar="FILE", help="accept RS256 JWTs verified with this PEM public key")
    auth.add_argument("--jwt-audience", help="required 'aud' claim (a JWT flag needs it or --jwt-no-audience)")
    auth.add_argument(
        "--jwt-no-audience",
        action="store_true",
        help="accept tokens without an 'aud' claim (tokens meant for any service of the issuer); not recommended",
    )
    auth.add_argument("--jwt-issuer", help="required 'iss' claim")
    auth.add_argument(
        "--jwt-max-lifetime",
        type=float,
        metavar="SECONDS",
        help="refuse tokens valid for longer (exp - iat, or exp - now without iat); default 86400",
    )
    auth.add_argument(
        "--max-auth-failures",
        type=int,
        metavar="N",
        help="failed authentications per minute per client address before RESOURCE_EXHAUSTED (default 20)",
    )
    auth.add_argument("--policy", metavar="FILE", help="RBAC policy YAML (roles -> rpcs, models); SIGHUP reloads")
    auth.add_argument(
        "--audit-log", metavar="FILE", help="append an HMAC-chained audit event per call here (needs a key flag)"
    )
    auth.add_argument(
        "--audit-fsync",
        choices=("always", "never"),
        default="always",
        help="fsync the audit log after every event (default) or leave flushing to the OS (faster)",
    )
    auth.add_argument(
        "--audit-key-file", metavar="FILE", help="key file: its master key keys the chain, encrypts sensitive fields"
    )
    auth.add_argument("--audit-key-env", metavar="VAR", help="... or the base64 master key in $VAR")
    auth.add_argument(
        "--audit-unkeyed", action="store_true", help="allow an audit log without a key (plain sha256: development only)"
    )
    auth.add_argument(
        "--audit-fail-closed",
        action="store_true",
        help="a call whose audit event cannot be written fails UNAVAILABLE (default: served, logged and counted)",
    )
    auth.add_argument(
        "--audit-new-segment",
        action="store_true",
        help="start although the log no longer reaches its head checkpoint, recording the loss in the chain",
    )
    auth.add_argument(
        "--node-id",
        metavar="NAME",
        help="this replica's name in every audit record (`node`), to tell replicas' logs apart (default: the "
        "host name, a pod's name on Kubernetes)",
    )
    limits = serve.add_argument_group("per-caller limits")
    limits.add_argument("--rate-limit", type=_rate, metavar="R/s", help="calls per second per caller")
    limits.add_argument("--burst", type=int, metavar="N", help="calls a caller may make at once (default: R)")
    limits.add_argument("--max-streams", type=int, metavar="N", help="open streaming calls per caller (default 8)")
    threads = serve.add_argument_group("threads and streams (all callers together)")
    threads.add_argument(
        "--workers", type=int, default=16, metavar="N", help="threads for unary calls; streams have their own"
    )
    threads.add_argument(
        "--max-open-streams",
        type=int,
        default=64,
        metavar="N",
        help="streaming calls open at once (each holds a thread); beyond: RESOURCE_EXHAUSTED (default 64)",
    )
    threads.add_argument(
        "--first-message-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="a stream's first message must come within S seconds (default 10)",
    )
    threads.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="at most S seconds between a stream's messages (default 60)",
    )
    threads.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="intra-op threads of every model's backend (default: its runtime: block, else all cores); "
        "1 for a replica pinned to one core (taskset -c K)",
    )
    tls = serve.add_argument_group(
        "TLS 1.3 (plaintext unless given): serve starts an nginx front on --host:--port (TLS 1.2 refused), "
        "the gRPC server listens on loopback behind it; SIGHUP re-reads the files"
    )
    tls.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    tls.add_argument("--client-ca", metavar="FILE", help="require client certificates signed by this CA (mutual TLS)")
    limits.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR[/BITS]",
        help="a proxy whose x-forwarded-for / x-real-ip is believed for limits without auth (repeatable; "
        "serve's own TLS front is always trusted)",
    )
    serve.set_defaults(run=_cmd_serve)
