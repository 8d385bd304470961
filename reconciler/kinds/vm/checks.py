"""Semantic checks of ``vms.yaml`` beyond the schema: nodes, VNC ports, definitions."""

from __future__ import annotations

import xml.parsers.expat
from pathlib import Path

from reconciler.errors import Problem
from reconciler.yamlsrc import YamlDoc, YPath


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
    scan = _DomainScan()
    try:
        scan.parse(path.read_bytes())
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
    return []
