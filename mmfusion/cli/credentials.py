"""Client credentials from a flag, an owner-only file or the environment; secrets on the command line are warned."""

from __future__ import annotations

import argparse
import os
import sys

from mmfusion.types import InputError

API_KEY_ENV = "MMFUSION_API_KEY"
TOKEN_ENV = "MMFUSION_TOKEN"


def _secret(args: argparse.Namespace, name: str, env: str) -> str | None:
    """The secret of `--NAME`, `--NAME-file FILE` or $ENV, in that order; the flag itself draws a warning."""
    flag = f"--{name.replace('_', '-')}"
    given, path = getattr(args, name), getattr(args, f"{name}_file")
    if given and path:
        raise InputError(f"{flag} and {flag}-file {path}: give one of them")
    if given:
        print(
            f"mmfusion: WARNING: {flag} on the command line is visible to other users (ps, shell history); "
            f"use {flag}-file FILE or ${env} instead",
            file=sys.stderr,
            flush=True,
        )
        return given
    if path:
        from mmfusion.security.files import read_private_text

        return read_private_text(path, f"{flag}-file")
    return os.environ.get(env) or None


def client_credentials(args: argparse.Namespace) -> dict[str, str | None]:
    """InspectionClient's `api_key` and `token` from the client flags (an API key wins over a token)."""
    api_key = _secret(args, "api_key", API_KEY_ENV)
    token = _secret(args, "token", TOKEN_ENV) if api_key is None else None
    return {"api_key": api_key, "token": token}


def client_options(args: argparse.Namespace) -> dict:
    """InspectionClient's keywords from the shared client flags: credentials, TLS and the plaintext opt-in."""
    credentials = None
    if args.tls_ca:
        from mmfusion.security.tls import channel_credentials

        credentials = channel_credentials(args.tls_ca, args.tls_client_cert, args.tls_client_key)
    elif args.tls_client_cert or args.tls_client_key:
        raise InputError("--tls-client-cert/--tls-client-key need --tls-ca (the CA that signed the server)")
    return {"credentials": credentials, "insecure_credentials": args.insecure_credentials, **client_credentials(args)}


def add_credential_options(options: argparse.ArgumentParser) -> None:
    """The flags that say how a client authenticates, and whether it may do so without TLS."""
    options.add_argument(
        "--api-key", default=None, help=f"API key (visible in ps: prefer --api-key-file or ${API_KEY_ENV})"
    )
    options.add_argument("--api-key-file", metavar="FILE", help="read the API key from this owner-only file")
    options.add_argument(
        "--token", default=None, help=f"JWT bearer token (visible in ps: prefer --token-file or ${TOKEN_ENV})"
    )
    options.add_argument("--token-file", metavar="FILE", help="read the JWT from this owner-only file")
    options.add_argument(
        "--insecure-credentials",
        action="store_true",
        help="send the API key or token over plaintext to a server that is not on this machine (no --tls-ca)",
    )
