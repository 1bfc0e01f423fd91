"""Placeholder: `mmfusion` subcommands of this area are being written."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the `mmfusion` parser."""
