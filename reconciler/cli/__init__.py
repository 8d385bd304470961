"""Command line of the ``reconcile`` console script: one module per subcommand.

``reconcile validate``, ``reconcile status`` and ``reconcile snapshot`` are dispatched on
the first argument; anything else is the ``reconcile [--dry-run]`` command itself (see
:mod:`reconciler.cli.apply`). Exit codes: docs/cli.md, and :mod:`reconciler.cli.codes`.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["EXIT_CHANGES", "EXIT_ERROR", "EXIT_OK", "console", "main"]

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

        try:
            print(f"reconcile {__version__}")
        except BrokenPipeError:
            return EXIT_ERROR
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


def console() -> NoReturn:
    """The ``reconcile`` console script and ``python -m reconciler``: :func:`main`, then
    the process ends with its exit code without the interpreter's teardown.

    What an exit must do is done first: standard output and error are flushed, and the exit
    handlers run (temporary directories still to remove, pools to join). What is skipped is
    the final garbage collection and the freeing of every module, which find nothing to do
    in a process about to end (~10-20 ms of a run, README: Performance). A thread that is
    not a daemon still running (none of ours) gets the ordinary exit, which waits for it.
    """
    try:
        code = main()
    except SystemExit as e:  # argparse's --help and usage errors
        if e.code is not None and not isinstance(e.code, int):
            raise
        code = e.code or 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            code = code or EXIT_ERROR
    atexit._run_exitfuncs()
    threading = sys.modules.get("threading")
    if threading is not None and any(
        t.is_alive() and not t.daemon and t is not threading.main_thread()
        for t in threading.enumerate()
    ):
        sys.exit(code)
    os._exit(code)
