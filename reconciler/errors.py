"""The one error hierarchy of reconciler.

Every error that reaches the user derives from :class:`ReconcilerError`. Errors about a single
resource carry its address (``ipset/mgmt``, ``nic/eth0`` ...) so that reports, logs and the JSON
plan can say exactly what failed while the rest of the run carries on.
"""

from __future__ import annotations

from typing import NamedTuple


class ReconcilerError(Exception):
    """Base of every error reconciler raises on purpose.

    ``address`` names the resource the error is about, or is ``None`` for run-wide errors.
    """

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.address = address

    def __str__(self) -> str:
        if self.address:
            return f"{self.address}: {self.message}"
        return self.message


class Problem(NamedTuple):
    """One problem in the desired state, located in its source file.

    Rendered as ``file:line:column: path: message`` (the format editors and CI annotate).
    ``line`` and ``column`` are 1-based; 0 means "the file as a whole".
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.path or '<root>'}: {self.message}"


class ValidationError(ReconcilerError):
    """The desired state is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ProviderError(ReconcilerError):
    """An external system (netlink, iptables, libvirt, tarsnap ...) failed for one resource."""


class NetlinkError(ProviderError):
    """The kernel answered a netlink request with an error.

    ``errno`` is the positive error number the kernel returned (ipset-specific codes included).
    """

    def __init__(self, message: str, *, errno: int, address: str | None = None) -> None:
        super().__init__(message, address=address)
        self.errno = errno


class CommandError(ProviderError):
    """An external command (iptables ...) failed: it exited non-zero (raised by its caller,
    worded for that command), or :func:`reconciler.runner.run` could not start it."""


class CommandNotFound(CommandError):
    """The program of an external command is not installed (``program`` names it)."""

    def __init__(self, message: str, *, program: str, address: str | None = None) -> None:
        super().__init__(message, address=address)
        self.program = program


class CommandTimeout(CommandError):
    """An external command ran past its ``timeout`` (seconds) and was killed."""

    def __init__(self, message: str, *, timeout: float, address: str | None = None) -> None:
        super().__init__(message, address=address)
        self.timeout = timeout


class LockHeldError(ReconcilerError):
    """Another run holds the lock."""


class StateError(ReconcilerError):
    """The state directory is unreadable or corrupt."""


class SourceError(ReconcilerError):
    """The git source could not be used: not a repository, unknown ref, dirty tree, fetch
    failure with no earlier checkout to fall back to."""


class VerifyError(ReconcilerError):
    """A commit failed verification (unsigned, bad or untrusted signature, a rewind).

    ``commit`` is the full hash of the offending commit (None when the refusal is about the
    range as a whole, e.g. no keys pinned on the host).
    """

    def __init__(self, message: str, *, commit: str | None = None) -> None:
        super().__init__(message, address="source")
        self.commit = commit


class SnapshotError(ReconcilerError):
    """A live-state snapshot file is unreadable, corrupt, from another host, or of a newer
    format than this version understands."""


class HostConfigError(ReconcilerError):
    """The host configuration (``/etc/reconciler/config.yaml``, ``--config FILE``) is
    missing when named explicitly, unreadable, unsafe or invalid; the message names the file
    (and for invalid content the line and key)."""


class RepositoryError(ReconcilerError):
    """The desired state is not one a run can use as a whole: the directory has neither
    ``fleet.yaml`` nor ``hosts/`` (a wrong ``--repo``/``--path``), or the host has no
    ``hosts/<host>.yaml``."""


class PlanFileError(ReconcilerError):
    """A saved plan (``--out``/``--plan``) cannot be written, read or used: unreadable,
    not a saved plan, made for another host, or stale (the live state or the desired
    state moved since it was made)."""


class TargetError(ReconcilerError):
    """A ``--target`` names no resource: neither in the desired state nor in the plan."""
