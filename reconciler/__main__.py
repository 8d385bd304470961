"""Allow ``python -m reconciler``."""

from reconciler.cli import console

console()
