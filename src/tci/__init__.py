"""tci: a self-hosted code interpreter compatible with the Together Code Interpreter API."""

from tci.config import Settings
from tci.errors import TCIError

__all__ = ["Settings", "TCIError"]
__version__ = "0.1.0"
