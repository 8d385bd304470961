"""Independent, throw-away ``libvirtd`` instances with the QEMU driver, for the lab and tests.

Used by ``./scripts/lab``'s placement stage (:mod:`lab.stages`) and by the end-to-end
tests (``tests/kinds/vm/test_libvirt_e2e.py``); it lives in ``lab/``, outside the product
package, where both can import it.

Each *node* is one ``libvirtd`` plus its own ``virtlogd``, started by::

    unshare --mount --net --pid --fork --kill-child --mount-proc -- sh <root>/init.sh

and ``init.sh`` (written per node, see ``_INIT``) bind-mounts host-visible directories under
``<root>`` over the fixed paths a *root* libvirtd uses, then starts the two daemons::

    /etc/libvirt  <- <root>/etc     libvirtd.conf, qemu.conf, virtlogd.conf, qemu/<dom>.xml
    /run          <- <root>/run     libvirt/libvirt-sock (the URI's socket), virtlogd-sock
    /var/lib      <- <root>/lib     libvirt/qemu/... (domain state, monitor sockets)
    /var/cache    <- <root>/cache   libvirt/qemu/capabilities (QEMU probe cache)
    /var/log      <- <root>/log     libvirt/libvirtd.log, virtlogd.log, qemu/<dom>.log

Why namespaces rather than configuration keys: ``libvirtd.conf`` can move the daemon's own
sockets (``unix_sock_dir``), but a privileged QEMU driver hard-codes its state, cache, log
and config paths and the path of the ``virtlogd`` socket it talks to, so two root daemons
configured only by keys would share them. A private mount namespace gives every node its own
copy of all of them, including its own ``virtlogd``. The other namespaces are there because:

* ``--net``: a node is a separate host, with its own ``127.0.0.1``. Without it a domain
  listening on VNC port 5901 on "kvm1" would hold 5901 for "kvm2" as well, which is not the
  situation being reproduced. The network namespace has only ``lo``: nothing here can touch
  the host's network (the libvirt network driver finds no ``default`` network either, since
  ``/etc/libvirt`` is the node's own, empty directory).
* ``--pid`` (+ ``--mount-proc``): libvirt double-forks QEMU out of its process tree, so
  killing ``libvirtd`` would leave QEMU behind. In a PID namespace, killing the namespace's
  init (``sh``) makes the kernel kill every process in it, QEMU included. ``--kill-child`` does
  that when ``unshare`` dies, and ``unshare`` itself gets ``PR_SET_PDEATHSIG`` so it dies with
  the test process. ``sh`` (dash) as init also reaps the re-parented QEMU processes; without
  that a destroyed domain would linger as a zombie and ``virDomainDestroy`` would hang.

The Debian package builds the QEMU driver for user ``libvirt-qemu``; it resolves that name at
start-up (before reading ``qemu.conf``) and fails when it does not exist. That user is created
by ``libvirt-daemon-system``, which we do not install (it starts a system libvirtd and pulls in
the default NAT network). So, when the host lacks it, each node bind-mounts a copy of
``/etc/passwd`` and ``/etc/group`` that adds it, inside its own namespace only; ``qemu.conf``
then runs QEMU as root anyway.

The URI for a node is ``qemu:///system?socket=<root>/run/libvirt/libvirt-sock``: the socket
is created inside the namespace but lives in a host-visible directory, so host-side clients
(libvirt-python, ``virsh``, the reconciler) reach it directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import grp
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Tools a node needs, and the Debian package providing each (for reason_unavailable()).
_TOOLS: dict[str, str] = {
    "libvirtd": "libvirt-daemon",
    "virtlogd": "libvirt-daemon",
    "qemu-system-x86_64": "qemu-system-x86",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "ip": "iproute2",
    "sh": "dash",
}
# libvirtd and virtlogd live in /usr/sbin, which is not always on a test runner's PATH.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)
_QEMU_DRIVER_GLOB = "usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so"
# Debian's compiled-in QEMU user and group (see the module docstring).
_QEMU_USER = "libvirt-qemu"
_QEMU_GROUPS = ("libvirt-qemu", "kvm")

# In-namespace path -> sub-directory of the node's root that is bind-mounted over it.
MOUNTS: dict[str, str] = {
    "/etc/libvirt": "etc",
    "/run": "run",
    "/var/lib": "lib",
    "/var/cache": "cache",
    "/var/log": "log",
}

_LIBVIRTD_CONF = """\
# Written by reconciler/libvirtd.py. Only the UNIX sockets, no TCP/TLS.
unix_sock_dir = "/run/libvirt"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
# Distinct per node, as on real hosts (libvirt refuses to migrate between equal host UUIDs).
host_uuid = "{host_uuid}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

_QEMU_CONF = """\
# Written by reconciler/libvirtd.py.
# VNC consoles listen on loopback only (in the node's own network namespace).
vnc_listen = "127.0.0.1"
# Run QEMU as root: no libvirt-qemu user needs to own anything, and no disk is shared.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
# No AppArmor/SELinux labelling, no cgroups (none are delegated to us in a container) and no
# per-domain /dev namespace: none of them is what these tests are about, and each can fail
# in a container for reasons unrelated to the reconciler.
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""

_VIRTLOGD_CONF = """\
# Written by reconciler/libvirtd.py.
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
"""

# PID 1 of the node's namespaces. `set -e`: a failed mount ends the node (and is reported)
# instead of starting a daemon that would use the host's real directories.
_INIT = """\
set -eu
{mounts}
ip link set lo up
virtlogd -f /etc/libvirt/virtlogd.conf -p /run/virtlogd.pid &
i=0
while [ ! -S /run/libvirt/virtlogd-sock ]; do
  i=$((i + 1)); [ "$i" -le 200 ] || {{ echo "virtlogd did not start" >&2; exit 1; }}
  sleep 0.05
done
# Not exec: this shell stays PID 1 and reaps the QEMU processes libvirtd daemonizes.
libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirtd.pid
"""

_PR_SET_PDEATHSIG = 1


class HarnessError(RuntimeError):
    """A node could not be started; the message carries the daemons' own logs."""


@dataclass(frozen=True)
class Node:
    """One running libvirtd (+ virtlogd) in its own mount, network and PID namespaces."""

    name: str
    root: Path
    """Host directory holding everything of this node (see MOUNTS)."""
    init_pid: int
    """Host PID of the namespaces' init; ``nsenter --target`` it to act inside the node."""

    @property
    def socket(self) -> Path:
        """libvirtd's read-write UNIX socket, as seen from the host."""
        return self.root / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """Connection URI for libvirt-python, ``virsh -c`` and vms.yaml."""
        return f"qemu:///system?socket={self.socket}"

    def host_path(self, inside: str) -> Path:
        """Map a path inside the node (``/var/log/libvirt/...``) to the host's view of it."""
        for prefix, sub in MOUNTS.items():
            if inside == prefix or inside.startswith(prefix + "/"):
                return self.root / sub / inside[len(prefix) :].lstrip("/")
        raise ValueError(f"{inside} is not a per-node path (one of {', '.join(MOUNTS)})")

    def qemu_log(self, domain: str) -> str:
        """The domain's QEMU log (command lines and QEMU's own errors), as virtlogd wrote it."""
        path = self.host_path(f"/var/log/libvirt/qemu/{domain}.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def nsenter_net(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs in the node's network namespace."""
        return ["nsenter", f"--target={self.init_pid}", "--net", "--", *argv]

    def tcp_listeners(self) -> set[tuple[str, int]]:
        """IPv4 (address, port) pairs in LISTEN state inside the node's network namespace."""
        found: set[tuple[str, int]] = set()
        # /proc/<pid>/net/tcp shows the network namespace of <pid>, not the reader's.
        lines = Path(f"/proc/{self.init_pid}/net/tcp").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            octets = bytes.fromhex(addr_hex)[::-1]  # little-endian on x86
            found.add((".".join(str(b) for b in octets), int(port_hex, 16)))
        return found

    def diagnostics(self, lines: int = 30) -> str:
        """Tails of the node's init output and daemon logs, for failure messages."""
        parts = []
        for rel in ("init.out", "log/libvirt/libvirtd.log", "log/libvirt/virtlogd.log"):
            path = self.root / rel
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {self.name}: {rel} ---\n" + "\n".join(tail))
        return "\n".join(parts) or f"--- {self.name}: no logs ---"


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_SEARCH_PATH)


def reason_unavailable() -> str | None:
    """Why real libvirt daemons cannot be started here, or None when they can."""
    if os.uname().sysname != "Linux":
        return "needs Linux (mount, network and PID namespaces)"
    if os.geteuid() != 0:
        return "needs root (a privileged libvirtd in its own namespaces)"
    missing = sorted({f"{t} ({pkg})" for t, pkg in _TOOLS.items() if _which(t) is None})
    if not list(Path("/").glob(_QEMU_DRIVER_GLOB)):
        missing.append("libvirt's QEMU driver (libvirt-daemon-driver-qemu)")
    if importlib.util.find_spec("libvirt") is None:
        missing.append("the libvirt Python module (pip install libvirt-python)")
    if missing:
        return "missing: " + ", ".join(missing) + "; scripts/setup installs them"
    unshare = _which("unshare")
    assert unshare is not None
    probe = subprocess.run(
        [unshare, "--mount", "--net", "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot create mount/network/PID namespaces here: {probe.stderr.strip()}"
    return None


def _identity_overlay(root: Path) -> dict[str, Path]:
    """Copies of /etc/passwd and /etc/group adding what the QEMU driver resolves at start.

    Returns {in-namespace file: host copy}, empty when the host already has them all.
    """
    overlay: dict[str, Path] = {}
    missing_groups = []
    for name in _QEMU_GROUPS:
        try:
            grp.getgrnam(name)
        except KeyError:
            missing_groups.append(name)
    try:
        pwd.getpwnam(_QEMU_USER)
        need_user = False
    except KeyError:
        need_user = True
    if not (need_user or missing_groups):
        return overlay
    used = {g.gr_gid for g in grp.getgrall()} | {p.pw_uid for p in pwd.getpwall()}
    free_ids = (n for n in range(64055, 65000) if n not in used)
    gids = {name: next(free_ids) for name in missing_groups}
    group_text = Path("/etc/group").read_text()
    group_text += "".join(f"{name}:x:{gid}:\n" for name, gid in gids.items())
    (root / "group").write_text(group_text)
    overlay["/etc/group"] = root / "group"
    if need_user:
        uid = gids.get(_QEMU_USER) or grp.getgrnam(_QEMU_USER).gr_gid
        passwd_text = Path("/etc/passwd").read_text()
        passwd_text += f"{_QEMU_USER}:x:{uid}:{uid}:Libvirt Qemu:/nonexistent:/usr/sbin/nologin\n"
        (root / "passwd").write_text(passwd_text)
        overlay["/etc/passwd"] = root / "passwd"
    return overlay


def _prepare(name: str, root: Path) -> Path:
    """Create the node's directory tree, configuration and init script; return the script."""
    for sub in MOUNTS.values():
        (root / sub).mkdir(parents=True)
    for sub in ("etc/qemu", "run/libvirt", "lib/libvirt", "cache/libvirt", "log/libvirt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "libvirtd.conf").write_text(_LIBVIRTD_CONF.format(host_uuid=uuid.uuid4()))
    (root / "etc" / "qemu.conf").write_text(_QEMU_CONF)
    (root / "etc" / "virtlogd.conf").write_text(_VIRTLOGD_CONF)
    binds = {inside: root / sub for inside, sub in MOUNTS.items()}
    binds.update(_identity_overlay(root))
    script = root / "init.sh"
    script.write_text(f"# node {name}\n" + _INIT.format(mounts=_mount_lines(binds)))
    return script


def _mount_lines(binds: dict[str, Path]) -> str:
    """``mount --bind`` commands for ``binds`` ({in-namespace path: host source}).

    A bind over a directory hides the host paths below it for the mounts that follow: with
    the node's root under ``/run`` (the lab's fixed root), binding ``/run`` first would hide
    the sources of ``/var/lib`` and the others. So the destinations that contain another
    bind's source are mounted last.
    """
    sources = [str(src) for src in binds.values()]

    def hides_a_source(dst: str) -> bool:
        return any(src.startswith(dst.rstrip("/") + "/") for src in sources)

    ordered = sorted(binds.items(), key=lambda item: hides_a_source(item[0]))  # stable
    return "\n".join(
        f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for dst, src in ordered
    )


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL ``unshare`` if the test process dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_pid(pid: int, timeout: float) -> int:
    """The PID of ``unshare``'s forked child (the namespaces' init)."""
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{pid}/task/{pid}/children")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            kids = children.read_text().split()
            if kids:
                return int(kids[0])
        time.sleep(0.01)
    raise HarnessError(f"unshare (pid {pid}) did not fork its namespace init")


def _pids_in_pid_ns(ns: str) -> list[int]:
    """Host PIDs of all processes whose PID namespace is ``ns`` (``pid:[inode]``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == ns:
                    pids.append(int(entry.name))
    return pids


def _wait_ready(node: Node, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until the node answers a libvirt call over its socket (QEMU probed, driver up)."""
    import libvirt  # deferred: reason_unavailable() reports a missing module cleanly

    last_error = "socket not created yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(
                f"node {node.name} exited with {proc.returncode}\n{node.diagnostics()}"
            )
        if node.socket.exists():
            try:
                conn = libvirt.open(node.uri)
                try:
                    conn.getVersion()  # needs the QEMU driver initialised, not just the socket
                    return
                finally:
                    conn.close()
            except libvirt.libvirtError as exc:
                last_error = str(exc)
        time.sleep(0.1)
    raise HarnessError(f"node {node.name} not ready: {last_error}\n{node.diagnostics()}")


@dataclass
class _Running:
    node: Node
    proc: subprocess.Popen[bytes]
    pid_ns: str


def _kill(running: _Running) -> None:
    """SIGKILL a node's namespace init: the kernel then kills everything else in its PID ns."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(running.node.init_pid, signal.SIGKILL)
    running.proc.kill()  # unshare; --kill-child would also take the init down with it


def _wait_gone(running: _Running, timeout: float = 10.0) -> None:
    """Reap ``unshare`` and wait until no process of the node's PID namespace is left."""
    running.proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while pids := _pids_in_pid_ns(running.pid_ns):
        if time.monotonic() > deadline:
            raise HarnessError(f"node {running.node.name}: processes {pids} would not die")
        for pid in pids:  # normally already dying; only a stuck process needs this
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


@contextlib.contextmanager
def _base_dir(root: Path | None, names: Sequence[str]) -> Iterator[Path]:
    """The directory holding the nodes: a new temporary one, or ``root`` (locked) when given.

    A fixed ``root`` gives fixed socket paths, hence URIs that a vms.yaml can name. It is
    locked so that a second lab cannot wipe a running one; what an interrupted run left
    there (its processes are gone: they die with the process that started them) is removed.
    On exit the nodes' directories and the lock go, and ``root`` too if nothing else is in it.
    """
    if root is None:
        base = Path(tempfile.mkdtemp(prefix="reconciler-libvirtd-"))
        try:
            yield base
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / ".lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarnessError(f"{root} is in use by another run (lock {lock_path})") from None
        try:
            for name in names:
                shutil.rmtree(root / name, ignore_errors=True)  # left by an interrupted run
            yield root
        finally:
            for name in names:
                shutil.rmtree(root / name, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                root.rmdir()  # only when empty


@contextlib.contextmanager
def libvirt_daemons(
    names: Sequence[str], *, timeout: float = 60.0, root: Path | None = None
) -> Iterator[dict[str, Node]]:
    """Start one independent libvirtd + virtlogd per name; yield {name: Node}.

    The daemons start concurrently (each probes QEMU's capabilities, ~3 s). Node ``n`` lives
    in ``<root>/n`` (its socket, hence its URI, at ``<root>/n/run/libvirt/libvirt-sock``);
    without ``root`` in a new temporary directory. On exit, even after a failure, every
    process of every node (QEMU included) is killed and the nodes' directories, with their
    sockets, logs and domain definitions, are removed.
    """
    reason = reason_unavailable()
    if reason is not None:
        raise HarnessError(reason)
    unshare = _which("unshare")
    assert unshare is not None
    with _base_dir(root, names) as base, _nodes(names, base, unshare, timeout) as nodes:
        yield nodes


@contextlib.contextmanager
def _nodes(
    names: Sequence[str], base: Path, unshare: str, timeout: float
) -> Iterator[dict[str, Node]]:
    """Start the nodes under ``base``; kill them all (and wait for that) on exit."""
    env = {
        "PATH": _SEARCH_PATH,
        # libvirtd translates its error messages: pin them to the texts the tests assert on.
        "LC_ALL": "C",
        "LANG": "C",
        "HOME": str(base),
    }
    started: list[_Running] = []
    try:
        for name in names:
            root = base / name
            script = _prepare(name, root)
            with open(root / "init.out", "wb") as out:
                proc = subprocess.Popen(
                    [
                        unshare,
                        "--mount",
                        "--net",
                        "--pid",
                        "--fork",
                        "--kill-child",
                        "--mount-proc",
                        "--",
                        "sh",
                        str(script),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # a terminal's Ctrl-C reaches pytest, not the nodes
                    preexec_fn=_die_with_parent,
                )
            try:
                init_pid = _child_pid(proc.pid, timeout=10)
                pid_ns = os.readlink(f"/proc/{init_pid}/ns/pid")
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            started.append(_Running(Node(name, root, init_pid), proc, pid_ns))
        deadline = time.monotonic() + timeout
        for running in started:
            _wait_ready(running.node, running.proc, deadline)
        yield {r.node.name: r.node for r in started}
    finally:
        # Kill all nodes first, then wait: their teardowns (~1 s each) overlap.
        for running in started:
            _kill(running)
        errors = []
        for running in started:
            try:
                _wait_gone(running)
            except (HarnessError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        if errors:
            raise HarnessError("; ".join(errors))


def small_domain_xml(
    name: str,
    *,
    vnc_port: int | None = 5901,
    domain_uuid: str | None = None,
    memory_mib: int = 32,
) -> str:
    """A diskless, NIC-less domain that reaches "running" in about a second under TCG.

    ``type='qemu'`` means software emulation (``-accel tcg``): KVM is never asked for. With no
    disk and no NIC, SeaBIOS finds nothing to boot and idles (it retries every 60 s), which
    holds the VNC port at almost no CPU cost. ``vnc_port=None`` means ``autoport='yes'``.
    """
    graphics = (
        "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
        if vnc_port is None
        else f"<graphics type='vnc' port='{vnc_port}' autoport='no' listen='127.0.0.1'/>"
    )
    uuid_elem = f"<uuid>{domain_uuid}</uuid>" if domain_uuid else ""
    return f"""\
<domain type='qemu'>
  <name>{name}</name>
  {uuid_elem}
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {graphics}
    <memballoon model='none'/>
  </devices>
</domain>
"""
