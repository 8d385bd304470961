"""The project logger: a console format for people, JSON lines for timers and pipes.

Logs go to stderr so that stdout carries only the plan (text or JSON) and can be piped.
An event is a name and keyword fields (``log.get().info("applied", address=..., op=...)``);
the two formats are those ``docs/cli.md`` describes. Written with the standard library:
the logging library used before cost ~45 ms of imports (asyncio, ssl) in every run that
logged, a fifth of a whole no-op process.
"""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

#: Level numbers as :mod:`logging` has them (without importing it).
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}
_WIDEST = max(len(name) for name in _LEVELS)
_EVENT_PAD = 30

_settings: dict[str, Any] = {}
_write_lock = threading.Lock()


def configure(
    *, json_lines: bool | None = None, level: int = INFO, file: TextIO | None = None
) -> None:
    """Send events at ``level`` or above to ``file`` (default: stderr), one line each.

    ``json_lines=None`` picks JSON lines unless stderr is a terminal. Until this is called,
    events go to stderr with that same default choice.
    """
    _settings.update(json_lines=json_lines, level=level, file=file)


def _timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _json_line(level: str, event: str, fields: dict[str, Any]) -> str:
    import json

    record = {**fields, "event": event, "level": level, "timestamp": _timestamp()}
    return json.dumps(record, default=repr)


def _console_line(level: str, event: str, fields: dict[str, Any]) -> str:
    words = [_timestamp(), f"[{level:<{_WIDEST}}]", f"{event:<{_EVENT_PAD}}"]
    words += [f"{k}={v if isinstance(v, str) else repr(v)}" for k, v in sorted(fields.items())]
    return " ".join(words)


def _emit(level: str, event: str, fields: dict[str, Any]) -> None:
    if _LEVELS[level] < _settings.get("level", INFO):
        return
    json_lines = _settings.get("json_lines")
    if json_lines is None:  # the default, configured or not: JSON unless stderr is a terminal
        json_lines = not sys.stderr.isatty()
    line = (_json_line if json_lines else _console_line)(level, event, fields)
    out = _settings.get("file") or sys.stderr  # looked up now: tests swap sys.stderr
    with _write_lock:  # one whole line per event, also from worker threads
        out.write(line + "\n")
        out.flush()


class Logger:
    """Logs events: ``debug``, ``info``, ``warning`` and ``error``, each taking the event's
    name and its fields as keywords."""

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at debug level."""
        _emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at info level."""
        _emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at warning level."""
        _emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at error level."""
        _emit("error", event, fields)


_LOGGER = Logger()


def get() -> Logger:
    """The project logger."""
    return _LOGGER
