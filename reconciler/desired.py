"""Loading and validation of the desired-state repository (``docs/desired-state.md``).

Every file goes through four stages and *all* problems of all files are collected before
anything is reported:

1. :func:`reconciler.yamlsrc.load_yaml` — strict YAML (duplicate keys, encoding, syntax);
2. the JSON Schema (for ``fleet.yaml`` and ``hosts/<host>.yaml`` composed from each kind's
   part, :mod:`reconciler.schema`, as shipped in ``schemas/host.schema.json``;
   ``schemas/vms.schema.json`` for ``vms.yaml``), with jsonschema's errors translated into a
   sysadmin's words;
3. semantic checks the schema cannot express, each kind's own (``check`` in its
   ``reconciler/kinds/<kind>/checks.py``: CIDRs, families, duplicates after
   canonicalisation, maxelem, offload names, durations, VM placement and definitions);
4. what the files ask of the host, against the host configuration
   (:mod:`reconciler.hostconfig`; each kind's ``check_host``/``check_host_file``/
   ``check_host_cluster``): no program named by the repository unless it is the host's, no
   host file outside ``allowed_dirs``, libvirt URIs and restic repositories that start no
   program. Never cached, as it depends on the host.

Public API: :func:`list_hosts`, :func:`validate_repo`, :func:`load_host`, :func:`load_vms`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import kinds as registry
from reconciler.cache import FLEET_ROLE, HOST_ROLE, DesiredCache
from reconciler.errors import Problem, RepositoryError, ValidationError
from reconciler.hostconfig import HostConfig
from reconciler.model import HostDesired
from reconciler.schema import host_schema
from reconciler.yamlsrc import (
    YamlDoc,
    YPath,
    format_path,
    load_yaml,
    parse_fast,
    parse_yaml,
    plain_copy,
    read_bounded,
)

if TYPE_CHECKING:
    import jsonschema
    from jsonschema import Draft202012Validator

    from reconciler.kinds.base import Kind

SCHEMA_DIR = Path(__file__).parent / "schemas"

HOST_SCHEMA = "host.schema.json"
FLEET_FILE = "fleet.yaml"
HOSTS_DIR = "hosts"
VMS_FILE = "vms.yaml"

_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

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


def _schema(name: str) -> dict[str, Any]:
    """A fresh copy of schema ``name``: the host schema composed from the kinds' parts
    (:mod:`reconciler.schema`), others read from ``schemas/``."""
    if name == HOST_SCHEMA:
        return copy.deepcopy(host_schema())
    data: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return data


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    # jsonschema (~0.1 s to import) only locates problems, after the fast check failed.
    from jsonschema import Draft202012Validator

    schema = _schema(name)
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
        from jsonschema.exceptions import best_match

        best = best_match(err.context)
        if best is not None:
            yield from _translate(best, doc, top_unknown)
            return
        msg = f"invalid value {got}"
    else:
        msg = f"invalid value {got}: {err.message}"
    yield doc.problem(path, msg)


@functools.cache
def _fast_check(name: str) -> Callable[[Any], bool]:
    """The schema compiled to Python by fastjsonschema: ~15x faster than jsonschema on a
    valid document (a 1,000-host CI dry-run spent most of its time in jsonschema's ``$ref``
    resolution). It stops at the first error and does not locate it, so it only answers
    "valid?"; jsonschema then finds every problem. Our schemas use draft-07 keywords only
    (``tests/test_schema_fast.py`` checks both validators agree). ``use_default=False``: it
    must never write defaults into the document. The host schema's is compiled ahead of
    time (:mod:`reconciler.schemacheck`)."""
    from reconciler.schemacheck import Answers, host_check

    if name == HOST_SCHEMA:
        return host_check()
    import fastjsonschema

    schema = _schema(name)
    schema.pop("$schema", None)  # compiled with draft-07 semantics, which is all we use
    check = fastjsonschema.compile(schema, use_default=False)
    return Answers(check, fastjsonschema.JsonSchemaException)


def _fast_valid(schema: str, data: Any) -> bool:
    """Whether ``data`` is valid against ``schema``, by the compiled check alone."""
    return _fast_check(schema)(data)


def _schema_problems(doc: YamlDoc, schema: str, top_unknown: str | None) -> list[Problem]:
    out: list[Problem] = []
    if _fast_valid(schema, doc.data):
        return out
    # Invalid: jsonschema reports every problem, located.
    for err in _validator(schema).iter_errors(doc.data):
        out.extend(_translate(err, doc, top_unknown))
    return out


# --------------------------------------------------------------------------------------------
# Semantic checks
# --------------------------------------------------------------------------------------------


def _has_sections(data: dict[str, Any], kind: Kind) -> bool:
    """Whether a file's ``data`` has ``kind``'s section or one of its settings sections:
    the files its whole-file checks look at (the others would give them nothing, and
    would import the kind's checks for nothing)."""
    return (kind.section is not None and kind.section in data) or any(
        s in data for s in kind.settings
    )


def _check_host_semantics(path: Path, doc: YamlDoc) -> list[Problem]:
    """Every kind's semantic checks of its section (and of the file as a whole)."""
    data = doc.data
    out: list[Problem] = []
    if not isinstance(data, dict):
        return out
    for kind in registry.KINDS:
        if kind.check_file is not None and _has_sections(data, kind):
            out += kind.check_file(path, doc)
        section = data.get(kind.section) if kind.section else None
        if kind.check is None or not isinstance(section, dict):
            continue
        for name, spec in section.items():
            if isinstance(spec, dict):
                out += kind.check(doc, name, spec)
    return out


def _check_host_policy(doc: YamlDoc, config: HostConfig | None) -> list[Problem]:
    """Every kind's checks of what a fleet/host file asks of this host (a program to run, a
    host file to read) against the host configuration (None: the defaults). Kept out of
    the cached document's problems: the answer depends on the host configuration and on
    the host's file system (symlinks), not on the file's content alone."""
    data = doc.data
    out: list[Problem] = []
    if not isinstance(data, dict):
        return out
    host = config or HostConfig()
    for kind in registry.KINDS:
        if kind.check_host_file is not None and _has_sections(data, kind):
            out += kind.check_host_file(doc, host)
        section = data.get(kind.section) if kind.section else None
        if kind.check_host is None or not isinstance(section, dict):
            continue
        for name, spec in section.items():
            if isinstance(spec, dict):
                out += kind.check_host(doc, name, spec, host)
    return out


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

    def __init__(
        self,
        *,
        max_host_files: int | None = None,
        disk_cache: DesiredCache | None = None,
        share_loaded: bool = False,
    ) -> None:
        """``fleet.yaml`` (shared by every host) is always kept; with ``max_host_files`` only
        that many host files are (the most recent): a caller that loads each host at two
        revisions in turn reuses an unchanged file and holds one host at a time, not the
        whole fleet (1,000 hosts with 5,000-CIDR sets: gigabytes). With ``disk_cache`` a
        file not in memory is looked up there before it is parsed, and stored there once
        validated (:class:`reconciler.cache.DesiredCache`). With ``share_loaded`` (a caller
        that only reads what :func:`load_host` returns, the CI dry-run) each resource of a
        document is made into its typed and plain form once, and shared by every
        :class:`HostDesired` built from that document (fleet.yaml's by every host, an
        unchanged host file's by both revisions)."""
        self.max_host_files = max_host_files
        self.disk_cache = disk_cache
        self.share_loaded = share_loaded
        self._loaded: weakref.WeakKeyDictionary[YamlDoc, dict[tuple[str, str], Any]] = (
            weakref.WeakKeyDictionary()
        )
        self.docs: OrderedDict[tuple[str, bytes], YamlDoc] = OrderedDict()
        self._host_keys: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        # What a document asks of the host, checked once per document and configuration
        # (fleet.yaml is loaded with every host, at two revisions in CI); dropped with it.
        self._policy: weakref.WeakKeyDictionary[
            YamlDoc, tuple[HostConfig | None, list[Problem]]
        ] = weakref.WeakKeyDictionary()
        # fleet.yaml's bytes and digest, by its stat (read once, not once per host).
        self._fleet_raw: dict[Path, tuple[tuple[int, ...], bytes | None, bytes]] = {}

    def policy_problems(self, doc: YamlDoc, config: HostConfig | None) -> list[Problem]:
        """:func:`_check_host_policy` of ``doc``, computed once per document and
        configuration object while this cache lives (one run)."""
        known = self._policy.get(doc)
        if known is not None and known[0] is config:
            return known[1]
        problems = _check_host_policy(doc, config)
        self._policy[doc] = (config, problems)
        return problems

    def _read(self, repo: Path, rel: str) -> tuple[bytes | None, bytes]:
        """The bytes of ``rel`` (None: no regular file) and their SHA-256; fleet.yaml's are
        read again only when its stat (inode, size, times) changed."""
        path = repo / rel
        if rel != FLEET_FILE:
            raw = _read_file(path)
            return raw, hashlib.sha256(raw if raw is not None else b"").digest()
        try:
            st = path.lstat()
            sig: tuple[int, ...] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                    st.st_ctime_ns, st.st_mode)  # fmt: skip
        except OSError:
            sig = ()
        known = self._fleet_raw.get(path)
        if known is not None and sig and known[0] == sig:
            return known[1], known[2]
        raw = _read_file(path)
        digest = hashlib.sha256(raw if raw is not None else b"").digest()
        if sig:
            self._fleet_raw[path] = (sig, raw, digest)
        return raw, digest

    def _lookup(
        self, repo: Path, rel: str, digest: bytes
    ) -> tuple[tuple[str, bytes], YamlDoc | None]:
        key = (rel, digest)
        cached = self.docs.get(key)
        if cached is not None and cached.inputs and cached.root != repo:
            # Its checks read other files of its repository (members_from lists), which
            # may differ in this one (a CI dry-run's base): one document per repository.
            key = (rel, digest + os.fsencode(repo))
            cached = self.docs.get(key)
        return key, cached

    def verdict(self, repo: Path, rel: str) -> YamlDoc:
        """A document of ``rel`` of ``repo`` good for one question only: its problems
        (``problems``, and :func:`_check_host_policy` of it). The full document when it is
        in memory, else the disk cache's verdict on the content
        (:meth:`reconciler.cache.DesiredCache.get_verdict`: no members decoded), else the
        full validation (kept as :meth:`load` keeps it). The same problems as :meth:`load`
        gives; never for planning."""
        raw, digest = self._read(repo, rel)
        if raw is not None:
            _, cached = self._lookup(repo, rel, digest)
            if cached is not None:
                return cached
            if self.disk_cache is not None:
                role = FLEET_ROLE if rel == FLEET_FILE else HOST_ROLE
                doc = self.disk_cache.get_verdict(role, raw, rel, repo)
                if doc is not None:
                    doc.problems += _key_file_problems(repo, doc)
                    return doc
        return self.load(repo, rel)

    def load(self, repo: Path, rel: str) -> YamlDoc:
        """The validated document ``rel`` of ``repo``, from the cache when its content was
        loaded before."""
        raw, digest = self._read(repo, rel)
        key, cached = self._lookup(repo, rel, digest)
        if raw is None:
            cached = None
        if cached is None:
            cached = _validated_host_file(repo, rel, raw, self.disk_cache)
            if raw is None:
                return cached
            self.docs[key] = cached
        if rel != FLEET_FILE and self.max_host_files is not None:
            self._host_keys[key] = None
            self._host_keys.move_to_end(key)
            while len(self._host_keys) > self.max_host_files:
                del self.docs[self._host_keys.popitem(last=False)[0]]
        return cached


def _read_file(path: Path) -> bytes | None:
    """The bytes of a desired-state file, None when it is no regular file of bounded size
    (then :func:`reconciler.yamlsrc.load_yaml` reports it). Raises OSError, as
    ``load_yaml`` does."""
    return read_bounded(path)


def _load_host_file(
    repo: Path,
    rel: str,
    cache: LoadCache | None = None,
    disk_cache: DesiredCache | None = None,
) -> YamlDoc:
    """Load and fully validate one fleet/host file; problems are in ``doc.problems``."""
    if cache is not None:
        return cache.load(repo, rel)
    return _validated_host_file(repo, rel, _read_file(repo / rel), disk_cache)


def _validated_host_file(
    repo: Path, rel: str, raw: bytes | None, disk_cache: DesiredCache | None
) -> YamlDoc:
    """The validated document ``rel`` of ``repo`` whose bytes are ``raw``.

    Three ways, one answer. From ``disk_cache`` when it holds this content (only files
    with no problem are ever stored; the key files ``verify`` names are checked again, as
    they are not the file's content). Else through :func:`reconciler.yamlsrc.parse_fast`
    and the checks, which, when everything passes, is the answer (and is stored). Else,
    when anything failed or the fast parser declined, the line-aware loader and the same
    checks again, whose problems (file, line, field) are the ones reported.
    """
    role = FLEET_ROLE if rel == FLEET_FILE else HOST_ROLE
    if raw is not None:
        if disk_cache is not None:
            doc = disk_cache.get(role, raw, rel, repo)
            if doc is not None:
                doc.problems += _key_file_problems(repo, doc)
                if role == FLEET_ROLE and not doc.problems:
                    _VALIDATED_FLEET[raw] = _verdict_data(doc.data)
                return doc
        doc = _checked_fast(repo, rel, raw)
        if doc is not None:
            verdict = _verdict_data(doc.data)
            if disk_cache is not None:
                disk_cache.put(role, raw, doc, verdict)
            if role == FLEET_ROLE:
                _VALIDATED_FLEET[raw] = verdict
            return doc
    doc = load_yaml(repo / rel, rel) if raw is None else parse_yaml(raw, rel)
    doc.root = repo
    if doc.data is None:
        return doc
    doc.problems += _schema_problems(doc, HOST_SCHEMA, "kind")
    doc.problems += _verify_problems(repo, rel, doc)
    doc.problems += _check_host_semantics(repo / rel, doc)
    if raw is not None and disk_cache is not None and not doc.problems:
        # Valid, but beyond the fast parser (merge keys).
        disk_cache.put(role, raw, doc, _verdict_data(doc.data))
    return doc


#: The verdict data (:func:`_verdict_data`) of each fleet.yaml this process found valid, by
#: its bytes: trust, which reads ``verify:`` after the desired state is loaded, takes it from
#: here instead of parsing the file a second time (:func:`validated_fleet`).
_VALIDATED_FLEET: dict[bytes, dict[str, Any]] = {}


def validated_fleet(raw: bytes) -> dict[str, Any] | None:
    """The data of a fleet.yaml whose bytes are ``raw`` if this process loaded it and found
    no problem (every section but the members, as a cache verdict keeps), else None."""
    return _VALIDATED_FLEET.get(raw)


def _verdict_data(data: dict[str, Any]) -> dict[str, Any]:
    """What a cached verdict on a valid file keeps of its data: what the checks made on
    every load read (:func:`_check_host_policy`: each kind's ``check_host`` its section,
    ``check_host_file`` the settings sections; :func:`_key_file_problems`: ``verify``).
    Only the sections of kinds that have no ``check_host`` are left out (``ipsets``,
    ``nics``: the bulk of a file)."""
    skip = {k.section for k in registry.KINDS if k.section and k.check_host is None}
    return {k: v for k, v in data.items() if k not in skip}


def _checked_fast(repo: Path, rel: str, raw: bytes) -> YamlDoc | None:
    """The document of ``raw`` when the fast parser reads it and every check passes, else
    None (the caller then reports what failed, located by the line-aware loader)."""
    doc = parse_fast(raw, rel)
    if doc is None:
        return None
    doc.root = repo
    if not _fast_valid(HOST_SCHEMA, doc.data):
        return None
    if _verify_problems(repo, rel, doc) or _check_host_semantics(repo / rel, doc):
        return None
    return doc


def _verify_problems(repo: Path, rel: str, doc: YamlDoc) -> list[Problem]:
    """``verify`` in a host file, or key files ``verify`` names that do not exist."""
    if rel != FLEET_FILE and isinstance(doc.data, dict) and "verify" in doc.data:
        # Commit verification is repository-wide: a host file cannot switch it off or on.
        return [
            doc.problem(
                ("verify",), "'verify' belongs in fleet.yaml (it covers every host)", key=True
            )
        ]
    return _key_file_problems(repo, doc)


def _key_file_problems(repo: Path, doc: YamlDoc) -> list[Problem]:
    """Key files named by ``verify.signers`` that are not files of ``repo``: checked on
    every load, cached or not (they are other files than this one)."""
    out: list[Problem] = []
    if isinstance(doc.data, dict) and isinstance(doc.data.get("verify"), dict):
        for i, signer in enumerate(doc.data["verify"].get("signers") or []):
            if not isinstance(signer, dict):
                continue
            for field in ("openpgp", "ssh"):
                key_file = signer.get(field)
                if isinstance(key_file, str) and not (repo / key_file).is_file():
                    out.append(
                        doc.problem(("verify", "signers", i, field), f"no such key file {key_file}")
                    )
    return out


def _load_vms_file(repo: Path, config: HostConfig | None = None) -> YamlDoc:
    doc = load_yaml(repo / VMS_FILE, VMS_FILE)
    if doc.data is None:
        return doc
    doc.problems += _schema_problems(doc, "vms.schema.json", None)
    from reconciler.kinds.vm.checks import check_vms  # the vm kind's, imported when used

    doc.problems += check_vms(doc, repo)
    for kind in registry.KINDS:
        if kind.check_host_cluster is not None:
            doc.problems += kind.check_host_cluster(doc, config or HostConfig())
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


def check_repository(repo: Path, shown: str | None = None) -> None:
    """RepositoryError unless ``repo`` looks like a desired-state repository: it has a
    ``fleet.yaml`` or a ``hosts/`` directory (or both). Without either, a run would plan
    from nothing, which deletes everything reconciler owns: a wrong ``--repo`` or
    ``--path`` must not look like an empty desired state. ``shown`` is how the user
    named the directory (default: ``repo``)."""
    if (repo / FLEET_FILE).is_file() or (repo / HOSTS_DIR).is_dir():
        return
    raise RepositoryError(
        f"{shown or repo}: not a desired-state repository: no {FLEET_FILE} and no "
        f"{HOSTS_DIR}/ (check --repo / --path)"
    )


def valid_host_name(host: str) -> bool:
    """Whether ``host`` can name a host file (a short host name, nothing like ``../x``)."""
    return bool(_HOST_NAME.match(host))


def has_host_file(repo: Path, host: str) -> bool:
    """Whether ``hosts/<host>.yaml`` exists; RepositoryError for a name that is no short
    host name (``--host ../x``)."""
    if not _HOST_NAME.match(host):
        raise RepositoryError(f"{host!r} is not a valid short host name (--host)")
    return (repo / HOSTS_DIR / f"{host}.yaml").is_file()


def check_host_file(repo: Path, host: str) -> None:
    """RepositoryError unless ``hosts/<host>.yaml`` exists: every host names itself in
    the repository (an empty file ``{}`` means the fleet's defaults only), so a typo in
    ``--host`` or a renamed file is never planned from ``fleet.yaml`` alone. (The VM
    controller ``vms.yaml`` names is the one exception, for its cluster-wide kind only:
    see :func:`vms_controller`; callers decide.)"""
    if not has_host_file(repo, host):
        raise RepositoryError(missing_host_file(host))


def missing_host_file(host: str) -> str:
    """The message for a host without ``hosts/<host>.yaml`` (:func:`check_host_file`)."""
    return (
        f"no {HOSTS_DIR}/{host}.yaml: every host needs its file; an empty file {{}} means "
        "fleet defaults only"
    )


def controller_without_file(host: str, skipped: Sequence[str]) -> str:
    """The warning of a run of the VM controller that has no host file: only the
    cluster-wide kinds are planned, ``skipped`` are not."""
    return (
        f"no {HOSTS_DIR}/{host}.yaml: {host} is planned as the VM controller vms.yaml names "
        f"only; {', '.join(skipped)} need its file (an empty file {{}} means fleet defaults "
        "only)"
    )


def vms_controller(repo: Path) -> str | None:
    """The ``controller`` ``vms.yaml`` names, read leniently (None when there is no
    ``vms.yaml``, or it names none): which host may run without a host file, for VM
    placement only. Validation of the file is :func:`load_vms`'s."""
    if not (repo / VMS_FILE).is_file():
        return None
    doc = load_yaml(repo / VMS_FILE, VMS_FILE)
    controller = doc.data.get("controller") if isinstance(doc.data, dict) else None
    return controller if isinstance(controller, str) else None


def content_digest(repo: Path) -> str:
    """``sha256:<hex>`` of the desired state's content: every regular file below ``repo``
    (``.git`` excluded), by relative path and bytes, in path order. What a saved plan made
    without a commit (a plain directory, a dirty tree) records of what it was made
    against."""
    h = hashlib.sha256()
    entries: list[tuple[str, bytes]] = []
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / name
            rel = p.relative_to(repo).as_posix()
            if p.is_symlink():
                entries.append((rel, b"symlink:" + os.readlink(p).encode()))
            elif p.is_file():
                entries.append((rel, b"file:" + p.read_bytes()))
    for rel, data in sorted(entries):
        key = rel.encode()
        h.update(len(key).to_bytes(8, "big") + key + len(data).to_bytes(8, "big") + data)
    return f"sha256:{h.hexdigest()}"


def validate_repo(
    repo: Path,
    cache: LoadCache | None = None,
    *,
    config: HostConfig | None = None,
    disk_cache: DesiredCache | None = None,
) -> list[Problem]:
    """Validate the whole desired-state repository and return every problem, sorted.

    Checks ``fleet.yaml`` (optional), every ``hosts/*.yaml``, ``vms.yaml`` (optional) and the
    ``vms/*.xml`` definitions it references, and what they ask of the host against the host
    configuration ``config`` (None: the defaults). File names in problems are relative to
    ``repo``. An empty list means the repository is valid. With ``disk_cache``
    (:class:`reconciler.cache.DesiredCache`) a fleet or host file validated before (same
    content, schema and reconciler) is not parsed again, and a valid one is stored; the
    answer is the same with or without it, and nothing is stored for an invalid file.
    """
    problems: list[Problem] = []
    rels = [FLEET_FILE] if (repo / FLEET_FILE).exists() else []
    rels += [f"{HOSTS_DIR}/{name}.yaml" for name in list_hosts(repo)]
    for rel in rels:
        doc = _load_host_file(repo, rel, cache, disk_cache)
        problems += doc.problems + _check_host_policy(doc, config)
    problems += stray_host_files(repo)
    if (repo / VMS_FILE).exists():
        problems += _load_vms_file(repo, config).problems
    return sorted(set(problems))


def load_host(
    repo: Path,
    host: str,
    cache: LoadCache | None = None,
    *,
    config: HostConfig | None = None,
    disk_cache: DesiredCache | None = None,
) -> HostDesired:
    """Validate ``fleet.yaml`` and ``hosts/<host>.yaml`` and return the merged desired state.

    A missing host file means "fleet only" here (the command line requires the file first:
    :func:`check_host_file`); a missing ``fleet.yaml`` means "host only". Raises
    :class:`ValidationError` with every problem of both files if anything is invalid. The host
    file is merged over the fleet per resource (a host's ``ipsets.mgmt`` replaces the fleet's
    ``ipsets.mgmt`` as a whole); a kind's settings sections (``tarsnap``) merge key by key,
    over their defaults. Each kind's ``load`` makes its typed form: ``ipsets`` become
    :class:`IpsetSpec` (canonical members, ``source`` at the set's key); ``nics`` become
    :class:`NicSpec` (``source`` at the NIC's key, a ``ports`` block's at its ``ports`` key);
    ``nics``, ``backups`` and ``tarsnap`` are also returned validated in ``raw`` (offload
    values normalised to ``bool``, ``tarsnap.command`` defaulting to ``tarsnap``). With a
    :class:`LoadCache`, files already loaded (same name and content) are not parsed again;
    with ``disk_cache`` (:class:`reconciler.cache.DesiredCache`; a ``LoadCache`` has its
    own), neither are files validated by an earlier process: a hit gives the same desired
    state, ``source`` locations included, and the same errors. What the files ask of the
    host (programs, host files, :mod:`reconciler.hostconfig`) is checked against
    ``config`` (None: the defaults) on every call.
    """
    docs = _host_docs(repo, host, cache, config=config, disk_cache=disk_cache)

    typed: dict[str, dict[str, Any]] = {}
    raw: dict[str, Any] = {}
    for kind in registry.KINDS:
        if kind.section is None:
            continue
        if kind.load is not None:
            typed[kind.section] = {}
        if kind.load is None or kind.keeps_raw:
            raw[kind.section] = {}
        for settings in kind.settings:
            raw[settings] = {}
    for doc in docs:
        data: dict[str, Any] = doc.data
        shared = cache._loaded.setdefault(doc, {}) if cache and cache.share_loaded else None
        for kind in registry.KINDS:
            if kind.section is None:
                continue
            # A host file's resource replaces the fleet's resource of that name as a whole.
            for name, spec in (data.get(kind.section) or {}).items():
                if shared is not None and (kind.section, name) in shared:
                    loaded = shared[(kind.section, name)]
                elif kind.load is None:
                    loaded = plain_copy(spec)
                else:
                    loaded = kind.load(doc, name, spec)
                if shared is not None:
                    shared[(kind.section, name)] = loaded
                if kind.load is None:
                    raw[kind.section][name] = loaded
                    continue
                if kind.keeps_raw:
                    loaded, raw[kind.section][name] = loaded
                typed[kind.section][name] = loaded
            for settings in kind.settings:
                raw[settings].update(data.get(settings) or {})
    for kind in registry.KINDS:
        for settings, defaults in kind.settings.items():
            raw[settings] = {**defaults, **raw[settings]}
    return HostDesired(
        host=host,
        ipsets=typed.get("ipsets", {}),
        raw=raw,
        files=tuple(d.file for d in docs),
        nics=typed.get("nics", {}),
    )


def _host_docs(
    repo: Path,
    host: str,
    cache: LoadCache | None,
    *,
    config: HostConfig | None,
    disk_cache: DesiredCache | None,
    verdict: bool = False,
) -> list[YamlDoc]:
    """``fleet.yaml`` and ``hosts/<host>.yaml`` (those that exist), validated, or
    ValidationError with every problem of both (:func:`load_host`). ``verdict`` (with a
    ``cache``): the host file may come as a verdict (:meth:`LoadCache.verdict`), good for
    its problems only."""
    if not _HOST_NAME.match(host):
        raise ValidationError([Problem(f"{HOSTS_DIR}/{host}.yaml", 0, 0, "", "invalid host name")])
    docs: list[YamlDoc] = []
    if (repo / FLEET_FILE).exists():
        docs.append(_load_host_file(repo, FLEET_FILE, cache, disk_cache))
    host_rel = f"{HOSTS_DIR}/{host}.yaml"
    if (repo / host_rel).exists():
        if verdict and cache is not None:
            docs.append(cache.verdict(repo, host_rel))
        else:
            docs.append(_load_host_file(repo, host_rel, cache, disk_cache))
    policy = cache.policy_problems if cache is not None else _check_host_policy
    problems = [p for d in docs for p in (*d.problems, *policy(d, config))]
    if problems:
        raise ValidationError(problems)
    return docs


def validate_host(
    repo: Path, host: str, cache: LoadCache, *, config: HostConfig | None = None
) -> None:
    """What :func:`load_host` checks, without building the desired state: ValidationError
    with the same problems when it would raise, else None. A host file unchanged since the
    disk cache validated it is answered by its verdict (no members decoded); for a host
    that is not planned (the CI dry-run's unchanged hosts)."""
    _host_docs(repo, host, cache, config=config, disk_cache=None, verdict=True)


def load_vms(repo: Path, *, config: HostConfig | None = None) -> dict[str, Any] | None:
    """Validated ``vms.yaml`` as plain data, or ``None`` when the file does not exist.

    Defaults are filled in (``vms`` ``{}``, ``vnc_port`` ``"auto"``, ``state`` ``"running"``).
    Raises :class:`ValidationError` with every problem if the file or a definition is invalid,
    or asks what the host configuration ``config`` (None: the defaults) does not allow
    (libvirt node URIs).
    """
    if not (repo / VMS_FILE).exists():
        return None
    doc = _load_vms_file(repo, config)
    if doc.problems:
        raise ValidationError(doc.problems)
    data: dict[str, Any] = copy.deepcopy(doc.data)
    data.setdefault("vms", {})
    for spec in data["vms"].values():
        spec.setdefault("vnc_port", "auto")
        spec.setdefault("state", "running")
    return data


__all__ = [
    "DesiredCache",
    "LoadCache",
    "check_host_file",
    "check_repository",
    "content_digest",
    "controller_without_file",
    "format_path",
    "has_host_file",
    "list_hosts",
    "load_host",
    "load_vms",
    "missing_host_file",
    "valid_host_name",
    "validate_host",
    "validate_repo",
    "vms_controller",
]
