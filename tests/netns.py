"""Throw-away network namespaces for tests that touch kernel state.

Every test that changes kernel objects (ipsets, iptables rules, links) does it inside a
namespace created here, never in the host's own. ``Netns`` creates ``ip netns add <name>``,
runs commands in it, can switch the calling thread into it (so in-process netlink sockets and
child processes are created there) and deletes it on exit, which also destroys its ipsets,
rules and links.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

REQUIRED_TOOLS = ("ip", "ipset", "iptables", "ip6tables")


def missing_tools(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    """Return the required command-line tools that are not on PATH."""
    return [t for t in tools if shutil.which(t) is None]


def require_kernel_lab(tools: Sequence[str] = REQUIRED_TOOLS) -> None:
    """Skip (saying exactly why) unless we are root and have every tool; CI installs them all."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    missing = missing_tools(tools)
    if missing:
        pytest.skip(f"needs these tools on PATH (installed by .ci/run): {', '.join(missing)}")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Netns:
    """A named network namespace that exists for the lifetime of the object."""

    def __init__(self, prefix: str = "rtest") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"])

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace (``ip netns exec``) and capture text output."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            check=check,
            text=True,
            capture_output=True,
            input=input,
            env=env,
        )

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start ``argv`` inside the namespace without waiting for it."""
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            ["ip", "netns", "exec", self.name, *argv], text=True, **kwargs
        )

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Switch the calling thread into the namespace, and back on exit.

        Sockets opened and processes started inside the block belong to the namespace.
        """
        with (
            open("/proc/self/ns/net", "rb") as home,
            open(f"/run/netns/{self.name}", "rb") as target,
        ):
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def ipset_save(self) -> str:
        """``ipset save`` output, with the random per-set ``initval`` removed for comparison."""
        out = self.run(["ipset", "save"]).stdout
        return "\n".join(_strip_initval(line) for line in out.splitlines())

    def ipset_members(self, name: str) -> set[str]:
        """Members of set ``name`` as ``ipset save`` prints them (the standard tool's view)."""
        out = self.run(["ipset", "save", name]).stdout
        return {ln.split()[2] for ln in out.splitlines() if ln.startswith("add ")}

    def iptables_rules(self, binary: str = "iptables") -> str:
        """``iptables -S`` output inside the namespace."""
        return self.run([binary, "-S"]).stdout

    def delete(self) -> None:
        """Delete the namespace (idempotent)."""
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


def _strip_initval(line: str) -> str:
    parts = line.split()
    if "initval" in parts:
        i = parts.index("initval")
        del parts[i : i + 2]
    return " ".join(parts)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh network namespace, deleted after the test."""
    require_kernel_lab()
    ns = Netns()
    try:
        yield ns
    finally:
        ns.delete()
