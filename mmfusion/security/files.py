"""Secret files (API key hashes, private keys, master keys): refused when other users may read or change them."""

from __future__ import annotations

import stat
from pathlib import Path

from mmfusion.types import InputError

OTHERS = stat.S_IRWXG | stat.S_IRWXO  # any permission for the group or for everyone else


def check_private(path: str | Path, what: str, error: type[ValueError] = InputError) -> None:
    """`error` unless only the owner may read or write the file (mode 0600 or stricter); missing files pass."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # the caller's read reports a missing or unreadable file in its own words
    if mode & OTHERS:
        raise error(
            f"{what} {path}: mode {stat.S_IMODE(mode):04o} lets other users read or change it; "
            f"expected owner-only (chmod 600 {path})"
        )


def read_private_text(path: str | Path, what: str) -> str:
    """The text of an owner-only secret file; InputError naming `what` when it is unreadable, empty or exposed."""
    path = Path(path)
    check_private(path, what)
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InputError(f"{what} {path}: cannot read ({reason})") from None
    if not text:
        raise InputError(f"{what} {path}: empty; expected the secret on its first line")
    return text.splitlines()[0].strip()
