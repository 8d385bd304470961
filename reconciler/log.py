"""structlog set-up: a console renderer for people, JSON lines for timers and pipes.

Logs go to stderr so that stdout carries only the plan (text or JSON) and can be piped.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure(
    *, json_lines: bool | None = None, level: int = logging.INFO, file: TextIO | None = None
) -> None:
    """Configure structlog once per process, logging to ``file`` (default: stderr).

    ``json_lines=None`` picks JSON lines unless stderr is a terminal.
    """
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=file or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get() -> Any:
    """The project logger."""
    return structlog.get_logger("reconciler")
