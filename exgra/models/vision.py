"""Optional vision backbones that need extra packages."""

from __future__ import annotations

from exgra.errors import ExgraError

__all__ = ["require_open_clip"]


def require_open_clip() -> None:
    """Raise a clear error when the ``biomedclip`` extra (open_clip) is not installed."""
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        raise ExgraError(
            "BiomedCLIP needs the optional 'biomedclip' extra: pip install 'exgra[biomedclip]' "
            "(it brings torchvision; see the installation notes)"
        ) from exc
