"""Registration of the built-in parts: importing them fills the encoder, fusion, head and backend registries."""

from __future__ import annotations


def load_all() -> None:
    """Import every built-in encoder, fusion, head and backend so that its registration runs."""
    import mmfusion.encoders  # noqa: F401
    import mmfusion.fusion  # noqa: F401
    import mmfusion.heads  # noqa: F401
    import mmfusion.runtime  # noqa: F401
