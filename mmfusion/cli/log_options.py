"""--log-level and --log-format, on `mmfusion` itself and on commands that run long (serve), and their setup."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager, nullcontext

from mmfusion import logs

DEFAULT_LOG_LEVELS = {"serve": "info"}  # commands that log unasked; the others only with a flag or variable


def add_log_options(parser: argparse.ArgumentParser, inherit: bool = False) -> None:
    """The two flags; `inherit`: a command's own copies, which leave `mmfusion --log-level ...` alone unless given."""
    default = argparse.SUPPRESS if inherit else None
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=logs.LEVELS,
        default=default,
        help=f"log this level and above on stderr (default: ${logs.LEVEL_VARIABLE}, else info for serve; "
        "other commands log only when asked)",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=logs.FORMATS,
        default=default,
        help="text lines, or JSON lines with time, level, logger, message and request_id "
        f"(default: ${logs.FORMAT_VARIABLE}, else text)",
    )


def logging_for(args: argparse.Namespace) -> AbstractContextManager:
    """The command's logging (a context manager): the flags, else the environment, else the command's default."""
    chosen = logs.settings(
        getattr(args, "log_level", None), getattr(args, "log_format", None), DEFAULT_LOG_LEVELS.get(args.command)
    )
    return nullcontext() if chosen is None else logs.configured(*chosen)
