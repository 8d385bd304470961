"""Command line of the ``reconcile`` console script: one module per subcommand.

``reconcile validate``, ``reconcile status`` and ``reconcile snapshot`` are dispatched on
the first argument; anything else is the ``reconcile [--dry-run]`` command itself (see
:mod:`reconciler.cli.apply`). Exit codes: docs/cli.md, and :mod:`reconciler.cli.codes`.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Sequence

__all__ = ["EXIT_CHANGES", "EXIT_ERROR", "EXIT_OK", "main"]

from reconciler.cli.codes import EXIT_CHANGES, EXIT_ERROR, EXIT_OK

# Subcommand -> module under reconciler.cli with a ``run(argv) -> int``. Modules are imported
# only when their subcommand runs: ``reconcile --version`` must not pay for providers.
_SUBCOMMANDS = {
    "validate": "validate",
    "status": "status",
    "snapshot": "snapshot",
    "import": "importcmd",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reconcile`` console script (and ``python -m reconciler``):
    run the subcommand ``argv`` names (default ``sys.argv[1:]``) and return its exit code.
    An interrupt (Ctrl-C) or a closed stdout (broken pipe) exits 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered before any parser or kind is loaded
        from reconciler import __version__

        print(f"reconcile {__version__}")
        return EXIT_OK
    # A run builds its data once and keeps it to the end (a 200,000-member load: ~1M objects,
    # all alive): full collections scan them again and again and find nothing (~0.2 s of
    # that load). Young cycles are still collected, by the first two generations.
    gc.set_threshold(700, 10, 1000)
    try:
        module = _SUBCOMMANDS.get(argv[0]) if argv else None
        if module is not None:
            argv = argv[1:]
        else:
            module = "apply"
        run = importlib.import_module(f"reconciler.cli.{module}").run
        code: int = run(argv)
        return code
    except KeyboardInterrupt:
        print("reconcile: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
