"""tci: a self-hosted code interpreter compatible with the Together Code Interpreter API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tci.config import Settings
    from tci.errors import TCIError

__all__ = ["Settings", "TCIError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import tci.client` (the SDK) does not load
    # pydantic_settings and the rest of the server's dependencies.
    if name == "Settings":
        from tci.config import Settings
        return Settings
    if name == "TCIError":
        from tci.errors import TCIError
        return TCIError
    raise AttributeError(f"module 'tci' has no attribute {name!r}")
