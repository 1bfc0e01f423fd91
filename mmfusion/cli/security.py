"""Security subcommands of `mmfusion`: audit verify, keys generate/rotate, api-keys add, manifest write/verify."""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_PROBLEM = 1


def _audit_head(args: argparse.Namespace) -> Path | None:
    """The head checkpoint to check: --head, else `<log>.head` for the newest file given (audit.log.1: audit.log)."""
    if args.no_head:
        return None
    if args.head:
        return Path(args.head)
    newest = Path(args.files[-1])
    base, _, number = newest.name.rpartition(".")
    return newest.with_name(f"{base if base and number.isdigit() else newest.name}.head")


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from mmfusion.security.audit import verify
    from mmfusion.security.crypto import KeyStore

    if args.head and args.no_head:
        raise ValueError("--head and --no-head: give one")
    if args.key_file and args.key_env:
        raise ValueError("--key-file and --key-env: give one")
    keystore = None
    if args.key_file or args.key_env:
        keystore = KeyStore.from_file(args.key_file) if args.key_file else KeyStore.from_env(args.key_env)
    files = [Path(p) for p in args.files]
    report = verify(files, allow_partial=args.partial, keystore=keystore, head=_audit_head(args))
    if report.ok:
        segments = f"; {len(report.segments)} new segment(s) after a recorded loss: " if report.segments else ""
        print(f"ok: {report.records} records{segments}{' | '.join(report.segments)}")
        return 0
    print(f"audit: {report.problem} ({report.records} records verified before it)")
    return EXIT_PROBLEM


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    from mmfusion.security.crypto import CryptoError, KeyStore

    path = Path(args.file)
    if path.exists() and not args.force:
        raise CryptoError(f"key file {str(path)!r} already exists; use `mmfusion keys rotate` (or --force)")
    keystore = KeyStore.generate()
    keystore.save(path)
    print(f"wrote {path} (active key {keystore.active_id}, owner-only permissions); back it up and keep it secret")
    return 0


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from mmfusion.security.crypto import KeyStore, rewrap, rotate

    key_id = rotate(args.file)
    print(f"active key is now {key_id}; older keys stay in {args.file} to decrypt existing data")
    if args.rewrap:
        changed = rewrap([Path(p) for p in args.rewrap], KeyStore.from_file(args.file))
        print(f"rewrapped {changed} of {len(args.rewrap)} files under {key_id}")
    return 0


def _cmd_manifest_write(args: argparse.Namespace) -> int:
    from mmfusion.security.integrity import write_manifest

    destination = write_manifest(args.folder, args.files or None)
    print(f"wrote {destination}")
    return 0


def _cmd_manifest_verify(args: argparse.Namespace) -> int:
    from mmfusion.security.integrity import verify_manifest

    count = verify_manifest(args.folder)
    print(f"ok: {count} files match {Path(args.folder) / 'manifest.json'}")
    return 0


def _cmd_api_keys_add(args: argparse.Namespace) -> int:
    import sys

    from mmfusion.security.apikeys import add_api_key

    key = add_api_key(args.file, args.id, args.role)
    print(key)
    print(
        f"added {args.id!r} (role {args.role!r}) to {args.file}; the key above is shown only now: give it to the "
        "client (in an owner-only file for --api-key-file) and SIGHUP the server, or let it notice the change",
        file=sys.stderr,
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register audit, keys and manifest on the `mmfusion` parser."""
    audit = sub.add_parser("audit", help="audit log tools").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the hash chain; exit 1 naming the first problem")
    verify.add_argument("files", nargs="+", help="log files oldest first: audit.log.2 audit.log.1 audit.log")
    verify.add_argument("--partial", action="store_true", help="the oldest rotated files were deleted on purpose")
    verify.add_argument("--key-file", metavar="FILE", help="the key file the server's --audit-key-file named")
    verify.add_argument("--key-env", metavar="VAR", help="... or the variable its --audit-key-env named")
    verify.add_argument("--head", metavar="FILE", help="head checkpoint (default: LOG.head beside the newest file)")
    verify.add_argument("--no-head", action="store_true", help="check the chain alone (copies without the head)")
    verify.set_defaults(run=_cmd_audit_verify)

    keys = sub.add_parser("keys", help="master keys for encryption at rest").add_subparsers(
        dest="keys_command", required=True
    )
    generate = keys.add_parser("generate", help="write a new key file with one random master key")
    generate.add_argument("file")
    generate.add_argument("--force", action="store_true", help="replace an existing key file (its data is lost)")
    generate.set_defaults(run=_cmd_keys_generate)
    rotate = keys.add_parser("rotate", help="add a new active master key; old keys stay for decryption")
    rotate.add_argument("file")
    rotate.add_argument("--rewrap", nargs="+", default=[], metavar="PATH", help="encrypted files to rewrap")
    rotate.set_defaults(run=_cmd_keys_rotate)

    manifest = sub.add_parser("manifest", help="sha256 manifest of a model folder").add_subparsers(
        dest="manifest_command", required=True
    )
    write = manifest.add_parser("write", help="write FOLDER/manifest.json")
    write.add_argument("folder")
    write.add_argument("files", nargs="*", help="files to list (default: every file in the folder)")
    write.set_defaults(run=_cmd_manifest_write)
    check = manifest.add_parser("verify", help="check FOLDER against its manifest.json")
    check.add_argument("folder")
    check.set_defaults(run=_cmd_manifest_verify)

    api_keys = sub.add_parser("api-keys", help="the server's API key file (--api-keys)").add_subparsers(
        dest="api_keys_command", required=True
    )
    add = api_keys.add_parser("add", help="add a new random key mmk_<id>_<secret>; print it once on stdout")
    add.add_argument("file", help="the key file (created owner-only when missing)")
    add.add_argument("--id", required=True, help="the caller's id in audit events (A-Z a-z 0-9 . -)")
    add.add_argument("--role", required=True, help="its role in the access policy")
    add.set_defaults(run=_cmd_api_keys_add)
