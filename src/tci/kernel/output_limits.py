"""What one call's outputs may cost the server (each field is a setting in config.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputLimits:
    max_bytes: int  # TCI_MAX_OUTPUT_BYTES
    max_json_values: int = 1_000_000  # TCI_MAX_OUTPUT_JSON_VALUES
    line_delay: float = 0.05  # TCI_STREAM_PARTIAL_LINE_SECONDS
