"""Loading and validation of the desired-state repository (DESIGN.md section 1).

Every file goes through three stages and *all* problems of all files are collected before
anything is reported:

1. :func:`reconciler.yamlsrc.load_yaml` — strict YAML (duplicate keys, encoding, syntax);
2. the JSON Schema in ``schemas/`` (``host.schema.json`` for ``fleet.yaml`` and
   ``hosts/<host>.yaml``, ``vms.schema.json`` for ``vms.yaml``), with jsonschema's errors
   translated into a sysadmin's words;
3. semantic checks the schema cannot express (CIDRs, families, duplicates after
   canonicalisation, maxelem, offload names, durations, VM placement and definitions).

Public API: :func:`list_hosts`, :func:`validate_repo`, :func:`load_host`, :func:`load_vms`, plus
the helpers :func:`parse_duration` and :func:`resolve_offload` and the offload name tables.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import re
import xml.parsers.expat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import fastjsonschema
import jsonschema
import yaml
from jsonschema import Draft202012Validator

from reconciler.cidr import canonical_network
from reconciler.errors import Problem, ValidationError
from reconciler.model import FirewallRule, HostDesired, IpsetSpec, Location, NicSpec, RingSpec
from reconciler.yamlsrc import YamlDoc, YPath, format_path, load_yaml

SCHEMA_DIR = Path(__file__).parent / "schemas"

FLEET_FILE = "fleet.yaml"
HOSTS_DIR = "hosts"
VMS_FILE = "vms.yaml"

#: The kinds a host or fleet file may contain, in schema order.
HOST_KINDS: tuple[str, ...] = ("ipsets", "nics", "backups", "tarsnap")

_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# --------------------------------------------------------------------------------------------
# Offload names
# --------------------------------------------------------------------------------------------

#: ethtool's short and legacy long offload names (``ethtool -K``/``-k``) -> the kernel
#: features (``ethtool -k`` rows, ``netdev_features_strings``) they switch.
OFFLOAD_ALIASES: dict[str, tuple[str, ...]] = {
    "rx": ("rx-checksum",),
    "rx-checksumming": ("rx-checksum",),
    "tx": (
        "tx-checksum-ipv4",
        "tx-checksum-ip-generic",
        "tx-checksum-ipv6",
        "tx-checksum-fcoe-crc",
        "tx-checksum-sctp",
    ),
    "tx-checksumming": (
        "tx-checksum-ipv4",
        "tx-checksum-ip-generic",
        "tx-checksum-ipv6",
        "tx-checksum-fcoe-crc",
        "tx-checksum-sctp",
    ),
    "sg": ("tx-scatter-gather",),
    "scatter-gather": ("tx-scatter-gather",),
    "tso": (
        "tx-tcp-segmentation",
        "tx-tcp-ecn-segmentation",
        "tx-tcp-mangleid-segmentation",
        "tx-tcp6-segmentation",
    ),
    "tcp-segmentation-offload": (
        "tx-tcp-segmentation",
        "tx-tcp-ecn-segmentation",
        "tx-tcp-mangleid-segmentation",
        "tx-tcp6-segmentation",
    ),
    "ufo": ("tx-udp-fragmentation",),
    "udp-fragmentation-offload": ("tx-udp-fragmentation",),
    "gso": ("tx-generic-segmentation",),
    "generic-segmentation-offload": ("tx-generic-segmentation",),
    "gro": ("rx-gro",),
    "generic-receive-offload": ("rx-gro",),
    "lro": ("rx-lro",),
    "large-receive-offload": ("rx-lro",),
    "rxvlan": ("rx-vlan-hw-parse",),
    "rx-vlan-offload": ("rx-vlan-hw-parse",),
    "txvlan": ("tx-vlan-hw-insert",),
    "tx-vlan-offload": ("tx-vlan-hw-insert",),
    "ntuple": ("rx-ntuple-filter",),
    "ntuple-filters": ("rx-ntuple-filter",),
    "rxhash": ("rx-hashing",),
    "receive-hashing": ("rx-hashing",),
}

#: Kernel feature names (``net/ethtool/common.c: netdev_features_strings``), accepted as is.
#: Extend this table when a newer kernel adds a feature you need to switch.
KERNEL_FEATURES: frozenset[str] = frozenset(
    {
        "tx-scatter-gather",
        "tx-checksum-ipv4",
        "tx-checksum-ip-generic",
        "tx-checksum-ipv6",
        "highdma",
        "tx-scatter-gather-fraglist",
        "tx-vlan-hw-insert",
        "rx-vlan-hw-parse",
        "rx-vlan-filter",
        "tx-vlan-stag-hw-insert",
        "rx-vlan-stag-hw-parse",
        "rx-vlan-stag-filter",
        "vlan-challenged",
        "tx-generic-segmentation",
        "tx-lockless",
        "netns-local",
        "rx-gro",
        "rx-gro-hw",
        "rx-lro",
        "tx-tcp-segmentation",
        "tx-gso-robust",
        "tx-tcp-ecn-segmentation",
        "tx-tcp-mangleid-segmentation",
        "tx-tcp6-segmentation",
        "tx-tcp-accecn-segmentation",  # Linux 6.18
        "tx-fcoe-segmentation",
        "tx-gre-segmentation",
        "tx-gre-csum-segmentation",
        "tx-ipxip4-segmentation",
        "tx-ipxip6-segmentation",
        "tx-udp_tnl-segmentation",
        "tx-udp_tnl-csum-segmentation",
        "tx-gso-partial",
        "tx-tunnel-remcsum-segmentation",
        "tx-sctp-segmentation",
        "tx-esp-segmentation",
        "tx-udp-segmentation",
        "tx-gso-list",
        "tx-udp-fragmentation",
        "tx-checksum-fcoe-crc",
        "tx-checksum-sctp",
        "fcoe-mtu",
        "rx-ntuple-filter",
        "rx-hashing",
        "rx-checksum",
        "tx-nocache-copy",
        "loopback",
        "rx-fcs",
        "rx-all",
        "l2-fwd-offload",
        "hw-tc-offload",
        "esp-hw-offload",
        "esp-tx-csum-hw-offload",
        "rx-udp_tunnel-port-offload",
        "tls-hw-record",
        "tls-hw-tx-offload",
        "tls-hw-rx-offload",
        "rx-gro-list",
        "macsec-hw-offload",
        "rx-udp-gro-forwarding",
        "hsr-tag-ins-offload",
        "hsr-tag-rm-offload",
        "hsr-fwd-offload",
        "hsr-dup-offload",
    }
)


def resolve_offload(name: str) -> tuple[str, ...]:
    """Kernel feature names an offload name switches (``gso`` -> ``tx-generic-segmentation``).

    Raises ``KeyError`` for a name that is neither an ethtool name nor a kernel feature.
    """
    if name in OFFLOAD_ALIASES:
        return OFFLOAD_ALIASES[name]
    if name in KERNEL_FEATURES:
        return (name,)
    raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(?:[0-9]+[smhdw])+$")


def parse_duration(text: str) -> timedelta:
    """Parse ``30m``, ``1h``, ``1d``, ``2w`` or a sum like ``1h30m``; raise ``ValueError``."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"not a duration: {text!r}")
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"([0-9]+)([smhdw])", text))
    return timedelta(seconds=seconds)


# --------------------------------------------------------------------------------------------
# Schema validation with readable messages
# --------------------------------------------------------------------------------------------

_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean (true/false)",
    "object": "a mapping (key: value)",
    "array": "a list",
    "null": "nothing",
}


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _describe(doc: YamlDoc, path: YPath, value: Any) -> str:
    """Describe a value the way the user wrote it."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = doc.texts.get(path)
    if isinstance(value, bool):
        return f"{text or str(value).lower()} (a boolean)"
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return repr(value)
    return text if text is not None else repr(value)


def _enum_text(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _translate(
    err: jsonschema.ValidationError, doc: YamlDoc, top_unknown: str | None
) -> Iterator[Problem]:
    """Turn one jsonschema error into located, human problems."""
    path: YPath = tuple(err.absolute_path)
    schema = err.schema if isinstance(err.schema, dict) else {}
    custom = schema.get("x-message")
    kind = err.validator
    value = err.instance
    vv: Any = err.validator_value

    if "propertyNames" in err.absolute_schema_path:
        kpath = (*path, str(value))
        msg = custom or f"invalid name {value!r}"
        yield doc.problem(kpath, f"{msg}, got {value!r}", key=True)
        return
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        for key in value:
            if key in allowed:
                continue
            kpath = (*path, key)
            if not path and top_unknown:
                msg = f"unknown {top_unknown} {key!r} (known: {', '.join(allowed)})"
            else:
                msg = f"unknown key {key!r} (allowed: {', '.join(allowed)})"
            yield doc.problem(kpath, msg, key=True)
        return
    if kind == "required":
        missing = [k for k in vv if isinstance(value, dict) and k not in value]
        for key in missing:
            yield doc.problem(path, f"missing required key {key!r}", key=True)
        return

    got = _describe(doc, path, value)
    if custom:
        msg = f"{custom}, got {got}"
    elif kind == "type":
        types: list[str] = vv if isinstance(vv, list) else [vv]
        msg = f"expected {' or '.join(_TYPE_NAMES.get(t, t) for t in types)}, got {got}"
    elif kind == "enum":
        msg = f"expected one of: {_enum_text(vv)}; got {got}"
    elif kind == "const":
        msg = f"expected {vv!r}, got {got}"
    elif kind == "minimum":
        msg = f"must be at least {vv}, got {got}"
    elif kind == "maximum":
        msg = f"must be at most {vv}, got {got}"
    elif kind == "minItems":
        msg = "must not be empty" if vv == 1 else f"needs at least {vv} items"
    elif kind == "minLength":
        msg = "must not be empty"
    elif kind == "pattern":
        msg = f"{got} does not match the pattern {vv}"
    elif kind in ("anyOf", "oneOf") and err.context:
        best = jsonschema.exceptions.best_match(err.context)
        if best is not None:
            yield from _translate(best, doc, top_unknown)
            return
        msg = f"invalid value {got}"
    else:
        msg = f"invalid value {got}: {err.message}"
    yield doc.problem(path, msg)


@functools.cache
def _fast_check(name: str) -> Callable[[Any], Any]:
    """The schema compiled to Python by fastjsonschema: ~15x faster than jsonschema on a
    valid document (a 1,000-host CI dry-run spent most of its time in jsonschema's ``$ref``
    resolution). It stops at the first error and does not locate it, so it only answers
    "valid?"; jsonschema then finds every problem. Our schemas use draft-07 keywords only
    (``tests/test_schema_fast.py`` checks both validators agree). ``use_default=False``: it
    must never write defaults into the document."""
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    schema.pop("$schema", None)  # compiled with draft-07 semantics, which is all we use
    return cast(Callable[[Any], Any], fastjsonschema.compile(schema, use_default=False))


def _schema_problems(doc: YamlDoc, schema: str, top_unknown: str | None) -> list[Problem]:
    out: list[Problem] = []
    try:
        _fast_check(schema)(doc.data)
        return out
    except fastjsonschema.JsonSchemaException:
        pass  # invalid: jsonschema reports every problem, located
    for err in _validator(schema).iter_errors(doc.data):
        out.extend(_translate(err, doc, top_unknown))
    return out


# --------------------------------------------------------------------------------------------
# Semantic checks
# --------------------------------------------------------------------------------------------


def _check_ipset(doc: YamlDoc, name: str, spec: dict[str, Any]) -> list[Problem]:
    base: YPath = ("ipsets", name)
    out: list[Problem] = []
    family = spec.get("family", "inet")
    want_version = 4 if family == "inet" else 6
    members = spec.get("members")
    if not isinstance(members, list):
        return out
    seen: dict[str, int] = {}
    for i, m in enumerate(members):
        if not isinstance(m, str):
            continue  # the schema reported it
        mpath = (*base, "members", i)
        try:
            version, prefixlen, canon = canonical_network(m.strip())
        except ValueError:
            out.append(doc.problem(mpath, f"not a valid IP network: {m!r}"))
            continue
        if version != want_version:
            other = "inet6" if version == 6 else "inet"
            out.append(
                doc.problem(
                    mpath,
                    f"IPv{version} network {m} in an {family} set; "
                    f"put it in a set with family: {other}",
                )
            )
            continue
        if prefixlen == 0:
            halves = "0.0.0.0/1 and 128.0.0.0/1" if version == 4 else "::/1 and 8000::/1"
            out.append(
                doc.problem(
                    mpath,
                    f"the kernel rejects /0 in hash:net; split it into two /1 networks ({halves})",
                )
            )
            continue
        if canon in seen:
            j = seen[canon]
            first_line = doc.pos((*base, "members", j))[0]
            out.append(
                doc.problem(
                    mpath,
                    f"{m} is the same network as {members[j]} on line {first_line} "
                    f"(both are {canon})",
                )
            )
            continue
        seen[canon] = i
    if not out:
        doc.derived[("ipset_members", name)] = frozenset(seen)
    maxelem = spec.get("maxelem")
    if isinstance(maxelem, int) and not isinstance(maxelem, bool) and len(members) > maxelem:
        out.append(
            doc.problem(
                (*base, "members"),
                f"{len(members)} members but maxelem is {maxelem}; raise maxelem or drop members",
                key=True,
            )
        )
    return out


def _check_offloads(doc: YamlDoc, base: YPath, offloads: Any) -> list[Problem]:
    out: list[Problem] = []
    if not isinstance(offloads, dict):
        return out
    known = sorted(set(OFFLOAD_ALIASES) | KERNEL_FEATURES)
    for name in offloads:
        try:
            resolve_offload(name)
        except KeyError:
            hint = difflib.get_close_matches(name, known, n=1)
            msg = f"unknown offload {name!r}"
            msg += f"; did you mean {hint[0]!r}?" if hint else ""
            msg += " (use an ethtool name like gso, tso, gro or a kernel feature name"
            msg += " like tx-generic-segmentation)"
            out.append(doc.problem((*base, name), msg, key=True))
    out += _check_offload_overlaps(doc, base, offloads)
    return out


def _check_nic(doc: YamlDoc, name: str, spec: dict[str, Any]) -> list[Problem]:
    base: YPath = ("nics", name)
    out: list[Problem] = []
    if "rings" in spec and "ports" in spec:
        out.append(
            doc.problem(
                (*base, "rings"),
                "a bridge has no rings of its own; put them under ports:",
                key=True,
            )
        )
    out += _check_offloads(doc, (*base, "offloads"), spec.get("offloads"))
    ports = spec.get("ports")
    if isinstance(ports, dict):
        out += _check_offloads(doc, (*base, "ports", "offloads"), ports.get("offloads"))
    return out


def _offload_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return bool(value == "on")
    return None  # the schema reported it


def _check_offload_overlaps(doc: YamlDoc, base: YPath, offloads: dict[str, Any]) -> list[Problem]:
    """Two names in one ``offloads:`` block that switch the same kernel feature differently
    (``tso: off`` with ``tx-tcp-segmentation: on``) claim one setting two ways: an error,
    because whichever we applied, git would say the other."""
    out: list[Problem] = []
    first: dict[str, tuple[str, bool]] = {}
    for name, value in offloads.items():
        want = _offload_bool(value)
        try:
            features = resolve_offload(name)
        except KeyError:
            continue  # reported as unknown
        if want is None:
            continue
        for feature in features:
            if feature not in first:
                first[feature] = (name, want)
                continue
            other, other_want = first[feature]
            if other_want != want:
                line = doc.pos((*base, other), key=True)[0]
                out.append(
                    doc.problem(
                        (*base, name),
                        f"{name} {'on' if want else 'off'} contradicts {other} "
                        f"{'on' if other_want else 'off'} on line {line}: both switch {feature}",
                        key=True,
                    )
                )
                break
    return out


_KEEP_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def _check_backup(doc: YamlDoc, name: str, spec: dict[str, Any]) -> list[Problem]:
    base: YPath = ("backups", name)
    out: list[Problem] = []
    for key in ("every",):
        val = spec.get(key)
        if isinstance(val, str) and _DURATION.match(val) and parse_duration(val) <= timedelta(0):
            out.append(doc.problem((*base, key), f"must be longer than zero, got {val!r}"))
    keep = spec.get("keep")
    if isinstance(keep, dict):
        counts = [keep.get(k, 0) for k in _KEEP_COUNTS]
        within = keep.get("within")
        keeps_within = (
            isinstance(within, str)
            and bool(_DURATION.match(within))
            and parse_duration(within) > timedelta(0)
        )
        if all(isinstance(c, int) and c == 0 for c in counts) and not keeps_within:
            out.append(
                doc.problem(
                    (*base, "keep"),
                    "refusing a policy that keeps nothing: set last, hourly, daily, weekly, "
                    "monthly, yearly or within",
                    key=True,
                )
            )
    if spec.get("backend") == "tarsnap":
        for key in ("repository", "password_file", "prune"):
            if key in spec:
                out.append(
                    doc.problem((*base, key), f"{key!r} only applies to backend restic", key=True)
                )
    return out


def _check_host_semantics(doc: YamlDoc) -> list[Problem]:
    data = doc.data
    out: list[Problem] = []
    if not isinstance(data, dict):
        return out
    checks = (("ipsets", _check_ipset), ("nics", _check_nic), ("backups", _check_backup))
    for kind, check in checks:
        section = data.get(kind)
        if not isinstance(section, dict):
            continue
        for name, spec in section.items():
            if isinstance(spec, dict):
                out += check(doc, name, spec)
    return out


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


def _check_vms(doc: YamlDoc, repo: Path) -> list[Problem]:
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


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


class LoadCache:
    """Parsed files (with what was derived from them, e.g. typed ipsets) shared between
    loads, keyed by file *content*.

    A CI dry-run loads every host at two revisions: ``fleet.yaml`` (with a 5,000-CIDR set)
    would otherwise be parsed and validated 2,000 times, and a host file unchanged between
    the revisions twice. Keyed by (name, SHA-256 of the bytes), so a changed file is always
    loaded afresh. Users never modify a cached document's data; they only add to its
    ``derived`` results, which are the same for every user of that content.
    """

    def __init__(self, *, max_host_files: int | None = None) -> None:
        """``fleet.yaml`` (shared by every host) is always kept; with ``max_host_files`` only
        that many host files are (the most recent): a caller that loads each host at two
        revisions in turn reuses an unchanged file and holds one host at a time, not the
        whole fleet (1,000 hosts with 5,000-CIDR sets: gigabytes)."""
        self.max_host_files = max_host_files
        self.docs: OrderedDict[tuple[str, bytes], YamlDoc] = OrderedDict()
        self._host_keys: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    def load(self, repo: Path, rel: str) -> YamlDoc:
        """The validated document ``rel`` of ``repo``, from the cache when its content was
        loaded before."""
        key = (rel, hashlib.sha256((repo / rel).read_bytes()).digest())
        cached = self.docs.get(key)
        if cached is None:
            cached = self.docs[key] = _load_host_file(repo, rel)
        if rel != FLEET_FILE and self.max_host_files is not None:
            self._host_keys[key] = None
            self._host_keys.move_to_end(key)
            while len(self._host_keys) > self.max_host_files:
                del self.docs[self._host_keys.popitem(last=False)[0]]
        return cached


def _load_host_file(repo: Path, rel: str, cache: LoadCache | None = None) -> YamlDoc:
    """Load and fully validate one fleet/host file; problems are in ``doc.problems``."""
    if cache is not None:
        return cache.load(repo, rel)
    doc = load_yaml(repo / rel, rel)
    if doc.data is None:
        return doc
    schema_problems = _schema_problems(doc, "host.schema.json", "kind")
    doc.problems += schema_problems
    if rel != FLEET_FILE and isinstance(doc.data, dict) and "verify" in doc.data:
        # Commit verification is repository-wide: a host file cannot switch it off or on.
        doc.problems.append(
            doc.problem(
                ("verify",), "'verify' belongs in fleet.yaml (it covers every host)", key=True
            )
        )
    elif isinstance(doc.data, dict) and isinstance(doc.data.get("verify"), dict):
        for i, signer in enumerate(doc.data["verify"].get("signers") or []):
            if not isinstance(signer, dict):
                continue
            for field in ("openpgp", "ssh"):
                key_file = signer.get(field)
                if isinstance(key_file, str) and not (repo / key_file).is_file():
                    doc.problems.append(
                        doc.problem(("verify", "signers", i, field), f"no such key file {key_file}")
                    )
    doc.problems += _check_host_semantics(doc)
    doc.problems += _check_nic_merge_conflicts(repo / rel, doc)
    return doc


def _nic_leaves(spec: Any) -> dict[str, Any]:
    """The individual settings of one NIC definition, keyed ``offloads.<kernel feature>``,
    ``rings.rx``, ``ports.offloads.<kernel feature>`` ... (offload names resolved, so ``gso``
    and ``tx-generic-segmentation`` are the same setting)."""
    out: dict[str, Any] = {}
    if not isinstance(spec, dict):
        return out
    for prefix, block in (("", spec), ("ports.", spec.get("ports"))):
        if not isinstance(block, dict):
            continue
        rings = block.get("rings")
        if isinstance(rings, dict):
            for k, v in rings.items():
                out[f"{prefix}rings.{k}"] = v
        offloads = block.get("offloads")
        if isinstance(offloads, dict):
            for name, value in offloads.items():
                try:
                    features = resolve_offload(name)
                except KeyError:
                    continue
                for feature in features:
                    out[f"{prefix}offloads.{feature}"] = _offload_bool(value)
    return out


def _check_nic_merge_conflicts(path: Path, doc: YamlDoc) -> list[Problem]:
    """The same NIC defined twice in one file's ``nics:`` mapping with different values.

    The line-aware loader lets explicit keys win over YAML merge keys (``<<: *anchor``) and
    the first merge source win over later ones, silently, as YAML specifies. For a NIC that is
    fine when both definitions agree, but when they set the same setting differently (after
    resolving offload names) one of them is ignored without a word: that is an error here.
    Merge keys *inside* one NIC's mapping (shared defaults, then overrides) are the idiom
    merge keys exist for, and stay allowed. The same NIC in ``fleet.yaml`` and a host file is
    an override by design (the host file wins), not a conflict.
    """
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("nics"), dict):
        return []
    text = path.read_text(encoding="utf-8")
    if "<<" not in text:
        return []  # no merge key, nothing can be hidden (and no second parse to pay for)
    loader: Any = yaml.SafeLoader(text.removeprefix("\ufeff"))
    out: list[Problem] = []
    try:
        root = loader.get_single_node()
        nics_node = None
        if isinstance(root, yaml.MappingNode):
            for k, v in root.value:
                if isinstance(k, yaml.ScalarNode) and k.value == "nics":
                    nics_node = v
        if not isinstance(nics_node, yaml.MappingNode):
            return []
        # Every definition of every NIC, in precedence order: explicit keys, then merges.
        defs: dict[str, list[tuple[yaml.Node, yaml.Node, bool]]] = {}
        merges: list[yaml.Node] = []
        for k, v in nics_node.value:
            if k.tag == "tag:yaml.org,2002:merge":
                merges.append(v)
            elif isinstance(k, yaml.ScalarNode):
                defs.setdefault(k.value, []).append((k, v, False))
        for m in merges:
            sources = m.value if isinstance(m, yaml.SequenceNode) else [m]
            for src in sources:
                if isinstance(src, yaml.MappingNode):
                    for k, v in src.value:
                        if isinstance(k, yaml.ScalarNode):
                            defs.setdefault(k.value, []).append((k, v, True))
        for name, entries in defs.items():
            if len(entries) < 2:
                continue
            k0, v0, _ = entries[0]
            kept = _nic_leaves(loader.construct_object(v0, deep=True))
            for k, v, merged in entries[1:]:
                other = _nic_leaves(loader.construct_object(v, deep=True))
                differ = sorted(s for s in kept.keys() & other.keys() if kept[s] != other[s])
                if not differ:
                    continue
                line = k.start_mark.line + 1
                how = "through a merge key (<<)" if merged else "again"
                out.append(
                    doc.problem(
                        ("nics", name),
                        f"NIC {name} is defined {how} on line {line} with different values "
                        f"({', '.join(differ)}): YAML keeps the definition on line "
                        f"{k0.start_mark.line + 1} and would silently ignore this one; "
                        "define each NIC once per file",
                        key=True,
                    )
                )
    except yaml.YAMLError:
        return []  # already reported by the loader
    finally:
        loader.dispose()
    return out


def _load_vms_file(repo: Path) -> YamlDoc:
    doc = load_yaml(repo / VMS_FILE, VMS_FILE)
    if doc.data is None:
        return doc
    doc.problems += _schema_problems(doc, "vms.schema.json", None)
    doc.problems += _check_vms(doc, repo)
    return doc


def list_hosts(repo: Path) -> list[str]:
    """Names of the hosts that have a file ``hosts/<host>.yaml``, sorted."""
    hosts_dir = repo / HOSTS_DIR
    if not hosts_dir.is_dir():
        return []
    return sorted(p.stem for p in hosts_dir.glob("*.yaml") if p.is_file())


def stray_host_files(repo: Path) -> list[Problem]:
    """Files in ``hosts/`` that are not host files (``.yml``, invalid names)."""
    out: list[Problem] = []
    hosts_dir = repo / HOSTS_DIR
    if not hosts_dir.is_dir():
        return out
    for p in sorted(hosts_dir.iterdir()):
        rel = f"{HOSTS_DIR}/{p.name}"
        if p.suffix == ".yml":
            out.append(Problem(rel, 0, 0, "", f"ignored: host files must be named {p.stem}.yaml"))
        elif p.suffix == ".yaml" and not _HOST_NAME.match(p.stem):
            out.append(Problem(rel, 0, 0, "", f"{p.stem!r} is not a valid short host name"))
    return out


def validate_repo(repo: Path, cache: LoadCache | None = None) -> list[Problem]:
    """Validate the whole desired-state repository and return every problem, sorted.

    Checks ``fleet.yaml`` (optional), every ``hosts/*.yaml``, ``vms.yaml`` (optional) and the
    ``vms/*.xml`` definitions it references. File names in problems are relative to ``repo``.
    An empty list means the repository is valid.
    """
    problems: list[Problem] = []
    if (repo / FLEET_FILE).exists():
        problems += _load_host_file(repo, FLEET_FILE, cache).problems
    for host in list_hosts(repo):
        problems += _load_host_file(repo, f"{HOSTS_DIR}/{host}.yaml", cache).problems
    problems += stray_host_files(repo)
    if (repo / VMS_FILE).exists():
        problems += _load_vms_file(repo).problems
    return sorted(set(problems))


def _ipset_spec(
    name: str, spec: dict[str, Any], location: Location, known: frozenset[str] | None = None
) -> IpsetSpec:
    if known is not None:
        members = known  # canonicalised by _check_ipset already
    else:
        members = frozenset(canonical_network(m.strip())[2] for m in spec["members"])
    fw = spec.get("firewall")
    firewall = None
    if fw is not None:
        firewall = FirewallRule(
            chain=fw.get("chain", "INPUT"),
            target=fw.get("target", "ACCEPT"),
            in_interface=fw.get("in_interface"),
        )
    return IpsetSpec(
        name=name,
        type=spec["type"],
        family=spec.get("family", "inet"),
        maxelem=spec.get("maxelem"),
        hashsize=spec.get("hashsize"),
        members=members,
        firewall=firewall,
        source=location,
    )


def _nic_spec(name: str, nic: dict[str, Any], doc: YamlDoc, path: YPath) -> NicSpec:
    """Typed :class:`NicSpec` from one validated, normalised ``nics.<name>`` (or ``ports``)."""
    line, col = doc.pos(path, key=True)
    rings = None
    if "rings" in nic:
        r = nic["rings"]
        rings = RingSpec(r.get("rx"), r.get("tx"), r.get("rx-mini"), r.get("rx-jumbo"))
    ports = None
    if "ports" in nic:
        ports = _nic_spec(name, nic["ports"], doc, (*path, "ports"))
    return NicSpec(
        name=name,
        rings=rings,
        offloads=dict(nic.get("offloads", {})),
        ports=ports,
        source=Location(doc.file, line, col),
    )


def _normalise_offloads(offloads: dict[str, Any]) -> dict[str, bool]:
    return {k: (v if isinstance(v, bool) else v == "on") for k, v in offloads.items()}


def _plain_copy(value: Any) -> Any:
    """A deep copy of YAML-loaded data (dicts, lists, scalars): ~4x faster than
    ``copy.deepcopy``, which a 1,000-host CI dry-run spent over a second in."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def load_host(repo: Path, host: str, cache: LoadCache | None = None) -> HostDesired:
    """Validate ``fleet.yaml`` and ``hosts/<host>.yaml`` and return the merged desired state.

    A missing host file means "fleet only"; a missing ``fleet.yaml`` means "host only". Raises
    :class:`ValidationError` with every problem of both files if anything is invalid. The host
    file is merged over the fleet per resource (a host's ``ipsets.mgmt`` replaces the fleet's
    ``ipsets.mgmt`` as a whole); ``tarsnap`` merges key by key. ``ipsets`` become
    :class:`IpsetSpec` (canonical members, ``source`` at the set's key); ``nics`` become
    :class:`NicSpec` (``source`` at the NIC's key, a ``ports`` block's at its ``ports`` key);
    ``nics``, ``backups`` and ``tarsnap`` are also returned validated in ``raw`` (offload
    values normalised to ``bool``, ``tarsnap.command`` defaulting to ``tarsnap``). With a
    :class:`LoadCache`, files already loaded (same name and content) are not parsed again.
    """
    if not _HOST_NAME.match(host):
        raise ValidationError([Problem(f"{HOSTS_DIR}/{host}.yaml", 0, 0, "", "invalid host name")])
    docs: list[YamlDoc] = []
    if (repo / FLEET_FILE).exists():
        docs.append(_load_host_file(repo, FLEET_FILE, cache))
    host_rel = f"{HOSTS_DIR}/{host}.yaml"
    if (repo / host_rel).exists():
        docs.append(_load_host_file(repo, host_rel, cache))
    problems = [p for d in docs for p in d.problems]
    if problems:
        raise ValidationError(problems)

    ipsets: dict[str, IpsetSpec] = {}
    nics: dict[str, Any] = {}
    nic_specs: dict[str, NicSpec] = {}
    backups: dict[str, Any] = {}
    tarsnap: dict[str, Any] = {}
    for doc in docs:
        data: dict[str, Any] = doc.data
        for name, spec in (data.get("ipsets") or {}).items():
            # Kept with the document: a cached fleet.yaml builds its sets once, not per host.
            typed = doc.derived.get(("ipset_spec", name))
            if typed is None:
                line, col = doc.pos(("ipsets", name), key=True)
                known = doc.derived.get(("ipset_members", name))
                typed = _ipset_spec(name, spec, Location(doc.file, line, col), known)
                doc.derived[("ipset_spec", name)] = typed
            ipsets[name] = typed
        for name, spec in (data.get("nics") or {}).items():
            nic = _plain_copy(spec)
            if "offloads" in nic:
                nic["offloads"] = _normalise_offloads(nic["offloads"])
            if "offloads" in nic.get("ports", {}):
                nic["ports"]["offloads"] = _normalise_offloads(nic["ports"]["offloads"])
            nics[name] = nic
            # Like ipsets, a host file's NIC replaces the fleet's NIC as a whole.
            nic_specs[name] = _nic_spec(name, nic, doc, ("nics", name))
        for name, spec in (data.get("backups") or {}).items():
            backups[name] = _plain_copy(spec)
        tarsnap.update(data.get("tarsnap") or {})
    tarsnap.setdefault("command", "tarsnap")
    return HostDesired(
        host=host,
        ipsets=ipsets,
        raw={"nics": nics, "backups": backups, "tarsnap": tarsnap},
        files=tuple(d.file for d in docs),
        nics=nic_specs,
    )


def load_vms(repo: Path) -> dict[str, Any] | None:
    """Validated ``vms.yaml`` as plain data, or ``None`` when the file does not exist.

    Defaults are filled in (``vms`` ``{}``, ``vnc_port`` ``"auto"``, ``state`` ``"running"``).
    Raises :class:`ValidationError` with every problem if the file or a definition is invalid.
    """
    if not (repo / VMS_FILE).exists():
        return None
    doc = _load_vms_file(repo)
    if doc.problems:
        raise ValidationError(doc.problems)
    data: dict[str, Any] = copy.deepcopy(doc.data)
    data.setdefault("vms", {})
    for spec in data["vms"].values():
        spec.setdefault("vnc_port", "auto")
        spec.setdefault("state", "running")
    return data


__all__ = [
    "HOST_KINDS",
    "KERNEL_FEATURES",
    "OFFLOAD_ALIASES",
    "LoadCache",
    "format_path",
    "list_hosts",
    "load_host",
    "load_vms",
    "parse_duration",
    "resolve_offload",
    "validate_repo",
]
