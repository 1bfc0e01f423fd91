"""Security subcommands of `mmfusion`: audit verify, keys generate/rotate, manifest write/verify."""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_PROBLEM = 1


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from mmfusion.security.audit import verify

    report = verify([Path(p) for p in args.files], allow_partial=args.partial)
    if report.ok:
        print(f"ok: {report.records} records")
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register audit, keys and manifest on the `mmfusion` parser."""
    audit = sub.add_parser("audit", help="audit log tools").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the hash chain; exit 1 naming the first problem")
    verify.add_argument("files", nargs="+", help="log files oldest first: audit.log.2 audit.log.1 audit.log")
    verify.add_argument("--partial", action="store_true", help="the oldest rotated files were deleted on purpose")
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
