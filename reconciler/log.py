"""structlog set-up: a console renderer for people, JSON lines for timers and pipes.

Logs go to stderr so that stdout carries only the plan (text or JSON) and can be piped.
structlog is imported when the first event is logged, not before: most runs that log
nothing (``reconcile --version``, a dry-run of a converged host) never pay for it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

#: The settings of the last :func:`configure` not yet handed to structlog (it is not imported
#: yet); None once handed over, or when nothing was configured.
_pending: dict[str, Any] | None = None

#: ``logging.INFO``, without importing :mod:`logging` (structlog does, when it is used).
INFO = 20


def configure(
    *, json_lines: bool | None = None, level: int = INFO, file: TextIO | None = None
) -> None:
    """Configure structlog once per process, logging to ``file`` (default: stderr).

    ``json_lines=None`` picks JSON lines unless stderr is a terminal; ``level`` is a
    :mod:`logging` level (events below it are dropped). The settings take
    effect when the first event is logged (structlog is imported then).
    """
    global _pending
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    _pending = {"json_lines": json_lines, "level": level, "file": file or sys.stderr}
    if "structlog" in sys.modules:  # already in use: apply now, as before
        _apply()


def _apply() -> None:
    """Hand the pending settings, if any, to structlog (importing it)."""
    global _pending
    import structlog

    if _pending is None:
        return
    settings, _pending = _pending, None
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings["json_lines"]
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(settings["level"]),
        logger_factory=structlog.PrintLoggerFactory(file=settings["file"]),
        cache_logger_on_first_use=False,
    )


class _Logger:
    """The project logger: each method (``info``, ``warning`` ...) is structlog's, looked up
    when called, so that structlog is imported only by a call that logs."""

    def __getattr__(self, name: str) -> Any:
        _apply()
        import structlog

        return getattr(structlog.get_logger("reconciler"), name)


_LOGGER = _Logger()


def get() -> Any:
    """The project logger."""
    return _LOGGER
