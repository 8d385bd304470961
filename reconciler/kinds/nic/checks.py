"""Semantic checks of ``nics:`` beyond the schema, and the typed form of a valid NIC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.errors import Problem
from reconciler.kinds.nic.offloads import (
    KERNEL_FEATURES,
    OFFLOAD_ALIASES,
    offload_bool,
    resolve_offload,
)
from reconciler.model import Location, NicSpec, RingSpec
from reconciler.yamlsrc import YamlDoc, YPath, plain_copy


def _check_offloads(doc: YamlDoc, base: YPath, offloads: Any) -> list[Problem]:
    out: list[Problem] = []
    if not isinstance(offloads, dict):
        return out
    known = sorted(set(OFFLOAD_ALIASES) | KERNEL_FEATURES)
    for name in offloads:
        try:
            resolve_offload(name)
        except KeyError:
            import difflib  # only to word this error

            hint = difflib.get_close_matches(name, known, n=1)
            msg = f"unknown offload {name!r}"
            msg += f"; did you mean {hint[0]!r}?" if hint else ""
            msg += " (use an ethtool name like gso, tso, gro or a kernel feature name"
            msg += " like tx-generic-segmentation)"
            out.append(doc.problem((*base, name), msg, key=True))
    out += _check_offload_overlaps(doc, base, offloads)
    return out


#: The kernel's buffer for an interface name, its NUL included (include/uapi/linux/if.h).
IFNAMSIZ = 16


def ifname_too_long(name: str) -> str:
    """The message for an interface name the kernel cannot hold (it counts bytes)."""
    n = len(name.encode())
    return f"interface name {name!r} is {n} bytes in UTF-8; the kernel allows {IFNAMSIZ - 1}"


def check(doc: YamlDoc, name: str, spec: dict[str, Any]) -> list[Problem]:
    """Known offload names, no two names switching one feature two ways, no rings on a
    bridge (they go under ``ports:``)."""
    base: YPath = ("nics", name)
    out: list[Problem] = []
    if len(name.encode()) > IFNAMSIZ - 1:
        out.append(doc.problem(base, ifname_too_long(name), key=True))
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


def _check_offload_overlaps(doc: YamlDoc, base: YPath, offloads: dict[str, Any]) -> list[Problem]:
    """Two names in one ``offloads:`` block that switch the same kernel feature differently
    (``tso: off`` with ``tx-tcp-segmentation: on``) claim one setting two ways: an error,
    because whichever we applied, git would say the other."""
    out: list[Problem] = []
    first: dict[str, tuple[str, bool]] = {}
    for name, value in offloads.items():
        want = offload_bool(value)
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
                    out[f"{prefix}offloads.{feature}"] = offload_bool(value)
    return out


def check_file(path: Path, doc: YamlDoc) -> list[Problem]:
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
    import yaml  # only here: a run whose files come from the cache parses no YAML

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


def load(doc: YamlDoc, name: str, spec: dict[str, Any]) -> tuple[NicSpec, dict[str, Any]]:
    """The typed NIC and its plain data with offload values as booleans."""
    nic = plain_copy(spec)
    if "offloads" in nic:
        nic["offloads"] = _normalise_offloads(nic["offloads"])
    if "offloads" in nic.get("ports", {}):
        nic["ports"]["offloads"] = _normalise_offloads(nic["ports"]["offloads"])
    return _nic_spec(name, nic, doc, ("nics", name)), nic
