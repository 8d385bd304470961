"""Semantic checks of ``vms.yaml`` beyond the schema: nodes, VNC ports, definitions."""

from __future__ import annotations

import re
import urllib.parse
import xml.parsers.expat
from pathlib import Path

from reconciler.errors import Problem
from reconciler.hostconfig import HostConfig, show
from reconciler.kinds.vm.domainxml import parse_definition
from reconciler.yamlsrc import MAX_FILE_BYTES, YamlDoc, YPath, read_bounded


class _DomainScan:
    """Reads a libvirt domain XML with expat, noting the top-level ``<name>`` and its line."""

    def __init__(self) -> None:
        self.depth = 0
        self.root: str | None = None
        self.name: str | None = None
        self.name_pos: tuple[int, int] = (1, 1)
        self._in_name = False
        self._parser = xml.parsers.expat.ParserCreate()
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._parser.CharacterDataHandler = self._chars

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth == 1:
            self.root = tag
        elif self.depth == 2 and tag == "name" and self.name is None:
            self._in_name = True
            self.name = ""
            p = self._parser
            self.name_pos = (p.CurrentLineNumber, p.CurrentColumnNumber + 1)

    def _end(self, tag: str) -> None:
        self.depth -= 1
        self._in_name = False

    def _chars(self, data: str) -> None:
        if self._in_name and self.name is not None:
            self.name += data

    def parse(self, data: bytes) -> None:
        self._parser.Parse(data, True)


def check_vms(doc: YamlDoc, repo: Path) -> list[Problem]:
    """Nodes that exist, VNC ports unique across the cluster, definition files that are a
    libvirt ``<domain>`` named as the VM."""
    data = doc.data
    out: list[Problem] = []
    if not isinstance(data, dict):
        return out
    nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
    vms = data.get("vms")
    if not isinstance(vms, dict):
        return out
    ports: dict[int, str] = {}
    for vm, spec in vms.items():
        if not isinstance(spec, dict):
            continue
        base: YPath = ("vms", vm)
        node = spec.get("node")
        if isinstance(node, str) and isinstance(nodes, dict) and node not in nodes:
            known = ", ".join(nodes) or "none"
            out.append(doc.problem((*base, "node"), f"unknown node {node!r} (nodes: {known})"))
        port = spec.get("vnc_port")
        if isinstance(port, int) and not isinstance(port, bool):
            if port in ports:
                other = ports[port]
                line = doc.pos(("vms", other, "vnc_port"))[0]
                out.append(
                    doc.problem(
                        (*base, "vnc_port"),
                        f"vnc_port {port} is also used by VM {other!r} on line {line}; "
                        "VNC ports must be unique across the cluster",
                    )
                )
            else:
                ports[port] = vm
        definition = spec.get("definition")
        if isinstance(definition, str) and not definition.startswith("/"):
            out += _check_definition(doc, repo, vm, definition)
    return out


def _check_definition(doc: YamlDoc, repo: Path, vm: str, definition: str) -> list[Problem]:
    dpath: YPath = ("vms", vm, "definition")
    path = repo / definition
    if ".." in Path(definition).parts:
        return []  # the schema reported it
    if not path.is_file():
        return [doc.problem(dpath, f"definition file {definition} does not exist")]
    raw = read_bounded(path)
    if raw is None:
        return [doc.problem(dpath, f"definition file {definition} is not a regular file of "
                            f"at most {MAX_FILE_BYTES} bytes")]  # fmt: skip
    scan = _DomainScan()
    try:
        scan.parse(raw)
    except xml.parsers.expat.ExpatError as e:
        msg = xml.parsers.expat.errors.messages.get(e.code, str(e))
        return [Problem(definition, e.lineno, e.offset + 1, "", f"malformed XML: {msg}")]
    if scan.root != "domain":
        return [Problem(definition, 1, 1, "", f"expected a libvirt <domain>, got <{scan.root}>")]
    if scan.name is None:
        return [Problem(definition, 1, 1, "domain", "the domain has no <name>")]
    if scan.name.strip() != vm:
        line, col = scan.name_pos
        return [
            Problem(
                definition,
                line,
                col,
                "domain.name",
                f"<name> is {scan.name.strip()!r} but {doc.file} calls this VM {vm!r}",
            )
        ]
    try:
        # What the run reads from it: memory units, counts, no DOCTYPE or entities.
        parse_definition(raw.decode("utf-8", errors="replace"))
    except ValueError as e:
        return [Problem(definition, 1, 1, "domain", str(e))]
    return []


# ----------------------------------------------------------------------------- host policy
# libvirt node URIs against the host configuration: only transports and parameters that
# cannot start a program, host paths only where the host allows them. Source: libvirt's
# "Connection URIs" page (https://libvirt.org/uri.html, docs/uri.rst in libvirt.git):
#
# * ``driver[+transport]://[username@][hostname][:port]/[path][?extraparameters]``;
# * the ``ext`` transport "invokes the user specified command" (``command=``): refused;
# * ``ssh``: ``command=`` is "Path to the ssh binary to use", ``netcat=`` names the command
#   run on the remote side, ``proxy=`` chooses the remote proxy binary: all three refused
#   (on every transport). ``ssh`` itself is the host's (``PATH``), and a host or user
#   starting with ``-`` (an ssh option, ``-oProxyCommand=``) is refused;
# * ``libssh``/``libssh2``: no process; ``keyfile=`` and ``known_hosts=`` are host files
#   (libssh2 may rewrite known_hosts): under ``allowed_dirs`` only;
# * ``socket=`` "The path to the Unix domain socket": under ``allowed_dirs``, ``/run`` or
#   ``/var/run`` (where daemons put sockets; the lab's nodes listen under /run);
# * ``tls``: ``pkipath=`` is a directory of client certificates and key: under
#   ``allowed_dirs``;
# * ``name=`` is "The name passed to the remote virConnectOpen function": over ``unix`` that
#   is this host's root daemon, which would open whatever URI it holds (``test:///<file>``)
#   unchecked: refused;
# * "Any others are passed unmodified through to the back end": so parameters are an
#   allowlist (below); parameter names are compared case-insensitively and URI-unescaped,
#   as libvirt does;
# * ``test:///<file>`` makes this process read a host file (its first line is echoed in
#   libvirt's parse error): only with ``libvirt.allow_test_driver: true``, and then only
#   ``test:///default`` or a file under ``allowed_dirs``;
# * ``qemu:///embed?root=DIR`` runs the QEMU driver inside this process with a root
#   directory from the URI: refused (``/embed`` for every driver).
#
# A bare name (``kvm1``) is a ``uri_aliases`` entry of the host's libvirt.conf: host
# configuration, allowed.

_TRANSPORTS = ("", "unix", "tls", "tcp", "ssh", "libssh", "libssh2")
_SAFE_PARAMS = (
    "mode", "no_verify", "no_tty", "known_hosts_verify", "sshauth", "tls_priority",
)  # fmt: skip
_PATH_PARAMS = ("keyfile", "known_hosts", "pkipath")
_SOCKET_DIRS = ("/run", "/var/run")
_PROGRAM_PARAMS = {
    "command": "names a program to run",
    "netcat": "names the program run on the remote side",
    "proxy": "chooses the program run on the remote side",
    "name": "is the URI libvirt's daemon opens unchecked",
}
_ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?$")


def libvirt_uri_problems(uri: str, host: HostConfig) -> list[str]:
    """Why node URI ``uri`` is refused (see the comment above), else []."""
    value = show(uri)
    if _ALIAS.match(uri):
        return []  # a uri_aliases name from the host's own libvirt.conf
    m = _URI.match(uri) if uri.isprintable() and " " not in uri else None
    if m is None:
        return [f"{value} is not a libvirt URI (driver[+transport]://[user@][host]/path)"]
    scheme, authority, query = m.group(1).lower(), m.group(2), m.group(4)
    path = urllib.parse.unquote(m.group(3))  # libvirt unescapes it (%2e%2e is ..)
    driver, _, transport = scheme.partition("+")
    out: list[str] = []
    if transport == "ext":
        out.append(
            f"{value}: the ext transport runs a command to reach the node; the repository "
            "may not start programs (use ssh, libssh, tls or unix)"
        )
    elif transport not in _TRANSPORTS:
        out.append(f"{value}: unknown libvirt transport {transport!r}")
    userinfo, _, hostport = urllib.parse.unquote(authority).rpartition("@")
    for what, part in (("host", hostport), ("user", userinfo)):
        if part.startswith("-"):
            out.append(
                f"{value}: the {what} {show(part)} starts with '-', which ssh would read as "
                "an option"
            )
    if path.rstrip("/").endswith("/embed"):
        out.append(
            f"{value}: an embedded driver runs inside this process with a root directory "
            "from the repository; use the node's daemon (/system)"
        )
    if driver == "test":
        out += _test_driver(value, transport, authority, path, host)
    for name, param in _params(query or ""):
        out += _param_problems(value, name, param, host)
    return out


def _test_driver(
    value: str, transport: str, authority: str, path: str, host: HostConfig
) -> list[str]:
    if not host.libvirt.allow_test_driver:
        return [
            f"{value}: libvirt's test driver is not allowed on this host "
            f"(libvirt.allow_test_driver is false, {host.origin('libvirt.allow_test_driver')})"
        ]
    if transport or authority or path in ("/default", ""):
        return []
    why = host.path_problem(path)
    return [] if why is None else [f"{value}: the test driver would read a host file: {why}"]


def _params(query: str) -> list[tuple[str, str]]:
    """The URI's parameters, ``(lower-cased name, value)``, both URI-unescaped. libvirt
    splits on ``&`` (and ``;``); splitting on both finds every name libvirt sees (more
    names, never fewer, and every one is checked)."""
    out: list[tuple[str, str]] = []
    for part in re.split(r"[&;]", query):
        if not part:
            continue
        name, _, val = part.partition("=")
        out.append((urllib.parse.unquote(name).lower(), urllib.parse.unquote(val)))
    return out


def _param_problems(value: str, name: str, param: str, host: HostConfig) -> list[str]:
    shown = show(name)
    if name in _PROGRAM_PARAMS:
        return [f"{value}: the parameter {shown}= {_PROGRAM_PARAMS[name]}; not allowed"]
    if name == "socket":
        why = host.path_problem(param, also=_SOCKET_DIRS)
        return [] if why is None else [f"{value}: socket={why}"]
    if name in _PATH_PARAMS:
        why = host.path_problem(param)
        return [] if why is None else [f"{value}: {shown}={why}"]
    if name in _SAFE_PARAMS:
        return []
    allowed = ", ".join(sorted((*_SAFE_PARAMS, *_PATH_PARAMS, "socket")))
    return [f"{value}: the parameter {shown}= is not one the host allows (allowed: {allowed})"]


def check_host_cluster(doc: YamlDoc, host: HostConfig) -> list[Problem]:
    """``vms.yaml`` against the host configuration: every node's ``uri``
    (:func:`libvirt_uri_problems`) and ``migration_uri`` (QEMU's ``tcp://host[:port]``
    only: the other migration URI forms, ``exec:`` among them, can start programs)."""
    data = doc.data
    out: list[Problem] = []
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict):
        return out
    for node, spec in nodes.items():
        if not isinstance(spec, dict):
            continue
        uri = spec.get("uri")
        if isinstance(uri, str):
            out += [doc.problem(("nodes", node, "uri"), m) for m in libvirt_uri_problems(uri, host)]
        migration = spec.get("migration_uri")
        if isinstance(migration, str) and not _MIGRATION.match(migration):
            out.append(
                doc.problem(
                    ("nodes", node, "migration_uri"),
                    f"{show(migration)}: only tcp://host[:port] is allowed",
                )
            )
    return out


_MIGRATION = re.compile(r"^tcp://[A-Za-z0-9._:\[\]-]+$")
