"""The exit codes of every ``reconcile`` command (docs/cli.md), in a module that imports
nothing, so that ``reconcile --version`` loads no parser and no kind."""

#: Success; with ``--detailed-exitcode``, also "no changes pending".
EXIT_OK = 0
#: An error: bad input, a refused or failed run, a usage error.
EXIT_ERROR = 1
#: With ``--detailed-exitcode``: the dry-run found changes pending.
EXIT_CHANGES = 2
