"""``reconcile import``: desired-state YAML for a host from its live state and from the files
people keep today, printed or merged into a desired-state directory (``-o DIR``).

Each kind offers it with a module ``reconciler/kinds/<kind>/importer.py`` (found by that
name, for the registry's kinds) holding ``add_arguments(parser)`` and ``collect(args, ctx)
-> Found``; :mod:`reconciler.importing` writes what they found. Import only reads: nothing
is written but the output files, and no lock is taken.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from reconciler import desired as desired_mod
from reconciler import importing
from reconciler import kinds as registry
from reconciler.cli import common
from reconciler.cli.codes import EXIT_ERROR, EXIT_OK
from reconciler.errors import ReconcilerError, ValidationError
from reconciler.importing import Found, ImportContext


def importers() -> list[tuple[str, ModuleType]]:
    """The registry's kinds that can import, with their importer modules, in registry order."""
    out = []
    for kind in registry.KINDS:
        name = f"reconciler.kinds.{kind.name}.importer"
        if importlib.util.find_spec(name) is not None:
            out.append((kind.name, importlib.import_module(name)))
    return out


def build_parser(mods: Sequence[tuple[str, ModuleType]]) -> argparse.ArgumentParser:
    """The parser for ``reconcile import``, with every importer's options."""
    p = common.Parser(
        prog="reconcile import",
        description="Write desired-state YAML for this host from its live state (ipsets, "
        "the NICs named, backup sets, the VMs of the libvirt nodes named) or from an ipset "
        "save file and an ifup-local script, so that a dry-run right after shows no changes. "
        "Prints it, or merges it into a desired-state directory with -o DIR.",
    )
    common.add_host(p)
    p.add_argument(
        "-o",
        "--out-dir",
        metavar="DIR",
        help="merge into this desired-state directory (hosts/<host>.yaml, vms.yaml); "
        "resources already there are left as they are",
    )
    p.add_argument(
        "--only",
        type=common.parse_kinds,
        help="comma-separated kinds to import (default: ipset, and the kinds whose sources "
        "are named)",
    )
    common.add_config(p)
    for _kind, mod in mods:
        mod.add_arguments(p)
    return p


def _named(args: argparse.Namespace) -> set[str]:
    """The kinds whose source options the command line names."""
    named = {"ipset"}
    if args.nic or args.ifup_local:
        named.add("nic")
    if args.tarsnap or args.restic:
        named.add("backup")
    if args.node:
        named.add("vm")
    return named


def _report(found: Found, result: importing.MergeResult | None) -> None:
    err = sys.stderr
    for note in found.notes:
        print(f"reconcile import: note: {note}", file=err)
    for s in [*found.skipped, *(result.skipped if result else [])]:
        print(f"reconcile import: not imported: {s.address}: {s.reason}", file=err)
    for e in found.errors:
        print(f"reconcile import: error: {e}", file=err)


def run(argv: Sequence[str]) -> int:
    """``reconcile import``: print the YAML (exit 0), or merge it into ``-o DIR``; what
    cannot be expressed is listed on stderr (and as comments); an error of one resource is
    reported and the others are still imported (exit 1). A malformed input file is an error
    naming its file and line (exit 1), and nothing is written."""
    mods = importers()
    args = build_parser(mods).parse_args(argv)
    config = common.host_config_or_report(args, "reconcile import")
    if config is None:
        return EXIT_ERROR
    host = args.host or common.short_hostname()
    if not desired_mod.valid_host_name(host):
        print(f"reconcile import: invalid host name {host!r}", file=sys.stderr)
        return EXIT_ERROR
    kinds = set(args.only) if args.only else _named(args)
    ctx = ImportContext(host, config, datetime.now(UTC).replace(microsecond=0))
    found = Found()
    for kind, mod in mods:
        if kind not in kinds:
            continue
        try:
            found.extend(mod.collect(args, ctx))
        except ValidationError as e:
            return _invalid(e)
        except ReconcilerError as e:
            found.errors.append(e if e.address else ReconcilerError(e.message, address=kind))
        except OSError as e:
            found.errors.append(ReconcilerError(f"reading: {e}", address=kind))
    header = [
        f"imported by `reconcile import` from host {host}, {ctx.day}: review the plan "
        "(reconcile --dry-run) before committing",
    ]
    vms_top = {"controller": host, "storage": "shared"}
    result = None
    if args.out_dir:
        try:
            result = importing.merge_into(
                Path(args.out_dir), host, found.resources, header, vms_top, found.skipped
            )
        except ReconcilerError as e:
            _report(found, None)
            print(f"reconcile import: {e}", file=sys.stderr)
            return EXIT_ERROR
        for path in result.written:
            print(f"reconcile import: wrote {path}", file=sys.stderr)
        print(
            f"reconcile import: added {len(result.added)} resource(s)"
            + (f": {', '.join(result.added)}" if result.added else ""),
            file=sys.stderr,
        )
    else:
        _print(found, host, header, vms_top)
    _report(found, result)
    return EXIT_ERROR if found.errors else EXIT_OK


def _invalid(e: ValidationError) -> int:
    for p in e.problems:
        print(p, file=sys.stderr)
    print(f"{len(e.problems)} problem(s) found; nothing was written.", file=sys.stderr)
    return EXIT_ERROR


def _print(found: Found, host: str, header: list[str], vms_top: dict[str, str]) -> None:
    host_rs = [r for r in found.resources if r.file == importing.HOST_FILE]
    vm_rs = [r for r in found.resources if r.file == importing.VMS_FILE]
    skipped_host = [s for s in found.skipped if importing.file_of(s.address) == importing.HOST_FILE]
    skipped_vm = [s for s in found.skipped if importing.file_of(s.address) == importing.VMS_FILE]
    out = importing.render(
        host_rs, importing.HOST_SECTIONS, [f"hosts/{host}.yaml", *header], skipped_host
    )
    if vm_rs or skipped_vm:
        out += "---\n" + importing.render(
            vm_rs, importing.VMS_SECTIONS, ["vms.yaml", *header], skipped_vm, top=vms_top
        )
    sys.stdout.write(out)
