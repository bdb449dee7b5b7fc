"""What one call's outputs may cost the server (each field is a setting in config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tci.config import Settings


@dataclass(frozen=True)
class OutputLimits:
    """Built from the settings only (`of`): no defaults here to drift from config.py's."""

    max_bytes: int  # TCI_MAX_OUTPUT_BYTES
    max_json_values: int  # TCI_MAX_OUTPUT_JSON_VALUES
    line_delay_seconds: float  # TCI_STREAM_PARTIAL_LINE_SECONDS

    @classmethod
    def of(cls, settings: Settings) -> OutputLimits:
        return cls(settings.max_output_bytes, settings.max_output_json_values,
                   settings.stream_partial_line_seconds)
