"""The CI dry-run, ``reconcile --dry-run --all-hosts/--snapshots/--against``: plan hosts
from a checkout (:mod:`reconciler.ci`); no host is contacted."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import desired as desired_mod
from reconciler import gitsource
from reconciler.cli import common
from reconciler.cli.codes import EXIT_CHANGES, EXIT_ERROR, EXIT_OK
from reconciler.errors import ReconcilerError, SourceError, ValidationError

if TYPE_CHECKING:
    from reconciler.ci import CiResult, Shard
    from reconciler.hostconfig import HostConfig


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the CI dry-run's options (``--all-hosts``, ``--snapshots``, ``--against``), as a
    group of the ``reconcile`` command's parser."""
    ci = p.add_argument_group(
        "CI dry-run (no host is contacted; needs --dry-run)",
        "Plan hosts from a CI checkout: against each host's snapshot (reconcile snapshot), "
        "else against the desired state at --against REV.",
    )
    ci.add_argument("--all-hosts", action="store_true", help="plan every hosts/*.yaml")
    ci.add_argument(
        "--snapshots",
        metavar="DIR",
        help="directory of <host>.json live-state snapshots written by 'reconcile snapshot'",
    )
    ci.add_argument(
        "--against",
        metavar="REV",
        help="plan hosts without a snapshot against the desired state at git revision REV; "
        "hosts whose inputs are the same at REV are reported unchanged, not planned",
    )
    ci.add_argument(
        "--shard",
        metavar="K/N",
        help="plan only shard K of N (hosts split by a stable hash of their name), for a CI "
        "matrix; the N shards together validate every file and plan every host once",
    )


def requested(args: argparse.Namespace) -> bool:
    """Whether the command line asks for the CI dry-run (any of its options is given)."""
    return bool(args.all_hosts or args.against or args.snapshots or args.shard)


def run(args: argparse.Namespace, config: HostConfig | None = None) -> int:
    """The CI dry-run of a parsed ``reconcile --dry-run`` command line: exit 1 on an invalid
    repository or any host's errors, 2 with --detailed-exitcode when something would change,
    else 0. ``--repo`` must be a local checkout. ``config`` is the host configuration the
    desired state is checked against (None: the defaults); nothing from the repository
    runs."""
    if gitsource.is_url(args.repo):
        print(
            "reconcile: the CI dry-run reads a checkout: pass its path as --repo", file=sys.stderr
        )
        return EXIT_ERROR
    kinds = args.only or list(common.KINDS)
    shard = None
    if args.shard is not None:
        from reconciler import ci

        try:
            shard = ci.parse_shard(args.shard)
        except ValueError as e:
            print(f"reconcile: {e}", file=sys.stderr)
            return EXIT_ERROR
    try:
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(gitsource.open_local(Path(args.repo), args.ref, args.path))
            desired_mod.check_repository(source.path, common.shown_repo(args))
            base, changed = _export_against(args, source, stack)
            result = _plan(args, source, kinds, base, changed, shard, config)
    except ReconcilerError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    if result.problems:
        if args.output == "markdown":  # the review comment says why, too
            from reconciler.render import markdown

            doc = document(result, source.commit, args.against)
            doc["problems"] = [str(p) for p in result.problems]
            sys.stdout.write(markdown.render_ci(doc))
        return common.invalid(ValidationError(result.problems))
    _write(args, result, source.commit)
    if result.failed:
        return EXIT_ERROR
    if result.changes and args.detailed_exitcode:
        return EXIT_CHANGES
    return EXIT_OK


def _export_against(
    args: argparse.Namespace, source: gitsource.Source, stack: contextlib.ExitStack[Any]
) -> tuple[Path | None, frozenset[str] | None]:
    """With ``--against REV``: the desired state at REV, read from git objects into a
    temporary directory that lives as long as ``stack``, and the hosts whose inputs changed
    since REV (None: plan every host: a shared file changed, or the tree is dirty and has
    no commit to compare); else (None, None). When only some hosts changed, only their host
    files and the shared files are written out: the others are not planned."""
    if not args.against:
        return None, None
    if source.repo is None:
        raise SourceError(f"--against {args.against}: {args.repo} is not in a git repository")
    rev = gitsource.resolve(source.repo, args.against)
    if source.dirty or source.commit is None:
        # A work tree: no git objects to compare, so plan every host.
        return gitsource.materialized(source.repo, rev, source.subdir, stack), None
    from reconciler import against, gittree

    top = Path(source.repo.working_tree_dir or source.repo.git_dir)
    before = {e.path: e.blob for e in gittree.list_tree(top, rev, source.subdir)}
    after = {e.path: e.blob for e in gittree.list_tree(top, source.commit, source.subdir)}
    changed = against.changed_hosts(before, after)

    def needed(path: str) -> bool:
        host = against.host_of(path)
        return host is None or changed is None or host in changed

    base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reconciler-tree-")))
    gittree.materialize(top, rev, source.subdir, base, only=needed)
    return base, changed


def _plan(
    args: argparse.Namespace,
    source: gitsource.Source,
    kinds: Sequence[str],
    base: Path | None,
    changed: frozenset[str] | None,
    shard: Shard | None,
    config: HostConfig | None = None,
) -> CiResult:
    """Plan every host (``--all-hosts``) or this one, against the host configuration
    ``config``: only ``shard``'s, and only those in ``changed`` (when not None) or with a
    snapshot; validated files are kept in ``--cache-dir`` when it is given."""
    from reconciler import ci

    hosts = None if args.all_hosts else [args.host or common.short_hostname()]
    # No state dir in CI: only --cache-dir (or $RECONCILER_CACHE_DIR) names a cache.
    disk_cache = common.disk_cache(args, None)
    return ci.plan_all(
        source.path,
        hosts,
        kinds,
        commit=source.commit,
        base=base,
        base_rev=args.against,
        snapshots=Path(args.snapshots) if args.snapshots else None,
        config=config,
        changed=changed,
        shard=shard,
        disk_cache=disk_cache,
    )


def document(result: CiResult, commit: str | None, against: str | None) -> dict[str, Any]:
    """The CI dry-run's JSON document (``docs/plan.md``): every host's plan and a summary;
    ``shard`` when the run is one shard of a matrix. (The Markdown of an invalid desired
    state renders it with ``problems`` added: every problem as ``file:line:col: ...``.)"""
    doc: dict[str, Any] = {
        "format_version": 1,
        "commit": commit,
        "against": against,
    }
    if result.shard is not None:
        doc["shard"] = {**result.shard.to_dict(), "hosts_total": result.total_hosts}
    doc["hosts"] = result.plans
    doc["summary"] = {
        "hosts": len(result.plans),
        "changes": result.changes,
        "errors": result.errors,
        "unchanged": result.unchanged,
    }
    return doc


def _write(args: argparse.Namespace, result: CiResult, commit: str | None) -> None:
    """Print the plans to stdout: text, one JSON document (``--output json``), or Markdown
    for a review comment (``--output markdown``, rendered from that document)."""
    from reconciler import ci

    if args.output == "json":
        doc = document(result, commit, args.against)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif args.output == "markdown":
        from reconciler.render import markdown

        sys.stdout.write(markdown.render_ci(document(result, commit, args.against)))
    else:
        sys.stdout.write(ci.render_text(result, commit, colour=common.colour(sys.stdout)))
    sys.stdout.flush()
