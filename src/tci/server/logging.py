"""Log format of `tci serve` (TCI_LOG_FORMAT): `text` is logfmt (key=value, one line per
record), `json` one JSON object per line. Extra fields given with `extra=` (e.g. the
`session` id on every line about a session) are printed as fields of their own."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else came from `extra=`.
# uvicorn adds `color_message` (its message with ANSI colours): never printed.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message", "asctime", "taskName", "color_message"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for name, value in vars(record).items():
        if name not in _STANDARD and not name.startswith("_") and value is not None:
            fields[name] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else (
        f"{value:.6g}" if isinstance(value, float) else str(value))
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    return json.dumps(text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def configure(fmt: str, level: int = logging.INFO) -> None:
    """Route every logger (uvicorn's too, run with log_config=None) to one stderr handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
