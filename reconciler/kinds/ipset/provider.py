"""The ``ipset`` kind: management CIDRs in ``hash:net`` sets, updated in place by delta.

Safety rules (the ipset kind in ``docs/kinds.md``), each enforced here and tested:

* members change by delta only, adds before deletes, so a member present both before and after
  is never absent and a set that stays non-empty never becomes empty, even for a moment;
* a maxelem/hashsize change fills a temporary set and swaps it in atomically (``ipset swap``):
  rules reference sets by index, so they keep matching across the swap;
* a change whose adds would pass the live set's maxelem is planned to fit: the deletions no
  added member replaces (and that do not hold the SSH client) go first when that makes room
  without emptying the set, else the set is rebuilt through a temporary set and swapped;
* a temporary set is ours by construction: its name (``<name>~rnew``, a ``~`` git cannot
  use) is free when planned, it is recorded in the state dir before it is created, and a
  leftover of an interrupted run is destroyed by the next one;
* ownership is recorded before the write that creates it ("creating set X", "inserting
  rule R") and confirmed after, so a run killed at any point leaves the next run knowing
  what is ours;
* members we add to a set with a default timeout are permanent (``timeout 0``), and the plan
  says the set has a timeout; sets with ``nomatch`` entries or ``skbinfo`` are refused with
  the reason (git cannot express them); ``counters``, ``comment`` and ``forceadd`` are kept;
* the kernel only swaps sets of the same type and family, so a type or family change of a set
  a rule uses is a plan error (never a destroy); one no rule uses is rebuilt and renamed;
* without ``force``, a change that empties a set is refused (shown in the plan, never applied);
* the anti-lockout guard judges the whole plan: without ``force``, when the current SSH client
  (``SSH_CONNECTION``, IPv4-mapped addresses as IPv4) is accepted now by a rule we manage (a
  rule matching on one of our sets, in INPUT or a user chain INPUT reaches, whose target is
  ACCEPT or a user chain that accepts) and no such rule accepts it once every change of the
  plan is made, the changes that take its access away are refused. When it keeps access only
  through what the plan creates, those changes come first and the removals require them;
* only sets in git or recorded as ours are touched; ours that left git are pruned unless a
  rule we did not insert still uses them, or an ACCEPT rule we manage uses them (deleting
  access needs intent: ``absent: true`` in git, a tombstone);
* a plan that would delete every set we own while git declares no ipsets (a wrong ``--repo``)
  is refused unless ``allow_empty`` (``--allow-empty``);
* rules are read from both iptables backends when both are installed; a set a rule of the
  backend we do not write with uses is not changed (a plan error naming the rule).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import shlex
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from reconciler.cidr import sort_networks
from reconciler.errors import NetlinkError, ProviderError, StateError
from reconciler.kinds.ipset import dumpmemo, firewall
from reconciler.kinds.ipset.against import spec_summary
from reconciler.kinds.ipset.batches import MEMBER_OPS, VERB, batches, run_members
from reconciler.kinds.ipset.netlink import IpsetClient, LiveSet
from reconciler.kinds.ipset.spec import is_tombstone
from reconciler.model import HostDesired, IpsetSpec
from reconciler.plan import Change, Op, PlanError, PlanWarning, member_ops
from reconciler.state import INTENT, StateDir


def _created(ops: Sequence[Op]) -> set[str]:
    """The sets ``ops`` create: found with ``list.index`` (a load's ops are one per member,
    so not a Python step each)."""
    verbs = list(map(VERB, ops))
    out: set[str] = set()
    at = -1
    with contextlib.suppress(ValueError):
        while True:
            at = verbs.index("create_set", at + 1)
            out.add(ops[at].args["set"])
    return out

KIND = "ipset"
TEMP_SUFFIX = "~rnew"
"""Temporary sets are ``<name>~rnew`` (``~rnew2``, ``~rnew3`` ... when taken), cut to the
kernel's 31 characters. ``~`` is outside the names git may give a set (the schema's
``[A-Za-z0-9_.-]``), so a temporary set can never be a set of the desired state."""
MAX_NAME = 31
"""The longest set name the kernel takes (IPSET_MAXNAMELEN - 1)."""


def temp_name(name: str, taken: Collection[str] = ()) -> str:
    """A temporary set name to rebuild ``name`` with that is none of ``taken`` (the sets on
    the host, the ones recorded as ours and the ones git names): ``<name>~rnew``, else
    ``~rnew2``, ``~rnew3`` ..., ``name`` cut so the whole fits 31 characters."""
    n = 1
    while True:
        suffix = TEMP_SUFFIX if n == 1 else f"{TEMP_SUFFIX}{n}"
        candidate = f"{name[: MAX_NAME - len(suffix)]}{suffix}"
        if candidate not in taken:
            return candidate
        n += 1


def is_temporary(record: Mapping[str, Any]) -> bool:
    """True for the ownership record of a temporary set (``temporary_for``: its set)."""
    return isinstance(record.get("temporary_for"), str)


@dataclass(frozen=True)
class IpsetLive:
    """Everything ``diff`` needs, read from the host. Plain data, so golden tests can build it.

    ``rules`` are the rules that match on a set, from both iptables backends (a rule of the
    backend reconciler does not write with is named by its binary, ``iptables-legacy``).
    ``rule_present`` says, per desired set with a ``firewall:`` rule, whether that rule exists.
    ``ours`` is the ownership record from the state dir; ``ssh_client`` the address from
    ``SSH_CONNECTION`` (None outside SSH). ``chains`` holds, per binary, the filter table's
    chains with the targets their rules jump to that can accept a packet
    (:func:`firewall.parse_chains`): whether a rule accepts, and whether INPUT reaches it.
    """

    sets: Mapping[str, LiveSet]
    rules: Sequence[firewall.Rule] = ()
    rule_present: Mapping[str, bool] = field(default_factory=dict)
    ours: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ssh_client: str | None = None
    errors: Mapping[str, str] = field(default_factory=dict)
    chains: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    def for_snapshot(self) -> IpsetLive:
        """The state as a snapshot keeps it: without ``ssh_client``.

        ssh_client is the SSH client of the process that read the state (whoever ran
        `reconcile snapshot`), not of any session a plan will later run in. A snapshot is
        planned elsewhere (CI), and the anti-lockout guard is a host-side check: a run on
        the host reads its own session's address when it plans there. Replaying a stale
        address in CI would refuse or allow changes for a session that no longer exists.
        """
        return replace(self, ssh_client=None)


def ssh_client_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The client address of the current SSH session, from ``SSH_CONNECTION``, or None.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.5``, what a dual-stack sshd reports for
    an IPv4 client) is the IPv4 address it maps: that is what iptables and the IPv4 sets
    see.
    """
    env = os.environ if environ is None else environ
    parts = env.get("SSH_CONNECTION", "").split()
    if not parts:
        return None
    return normalise_client(parts[0])


def normalise_client(text: str | None) -> str | None:
    """``text`` as an address the guard compares: IPv4-mapped IPv6 as IPv4, IPv6 compressed,
    any zone (``%eth0``) dropped; None for None or anything that is not an address."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _header_dict(s: LiveSet) -> dict[str, Any]:
    h = s.header
    return {
        "type": h.type,
        "family": h.family,
        "maxelem": h.maxelem,
        "hashsize": h.hashsize,
        "members": None if s.members is None else len(s.members),
    }


def _rule_op(op: str, spec: IpsetSpec) -> Op:
    assert spec.firewall is not None
    return Op(
        op,
        {
            "binary": firewall.binary_for(spec.family),
            "chain": spec.firewall.chain,
            "rule": firewall.rule_spec(spec.name, spec.firewall),
        },
    )


def _covering(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> frozenset[str]:
    """Every canonical network that contains ``addr``, one per prefix length: a set holds
    ``addr`` when it shares one of them (33 or 129 lookups, not a parse per member of a
    65,536-member set)."""
    return frozenset(
        str(ipaddress.ip_network((addr, p), strict=False)) for p in range(addr.max_prefixlen + 1)
    )


class IpsetProvider:
    """read / pure diff / apply for ipsets in the current network namespace."""

    kind = KIND

    def __init__(
        self, state: StateDir | None, *, force: bool = False, allow_empty: bool = False
    ) -> None:
        """``force`` lifts the emptying and lockout guards; ``allow_empty`` lets a plan
        delete every set we own while git declares no ipsets (``--allow-empty``)."""
        self.state = state
        self.force = force
        self.allow_empty = allow_empty
        # Changes applied by this provider in this run: what a require_applied op checks.
        self._applied: set[str] = set()
        # The desired members of the last read, by set (members digest, members), and the
        # dump memo (:mod:`.dumpmemo`), read once (None: not yet), then as last written:
        # what forget_vanished records.
        self._wanted: dict[str, tuple[str, frozenset[str]]] = {}
        self._memo: dict[str, tuple[str, str]] | None = None

    # ----------------------------------------------------------------------------- read
    def read(self, desired: HostDesired) -> IpsetLive:
        """Dump every set (one netlink dump), list rules using sets, check desired rules."""
        # The iptables-save processes run while this thread decodes the dump; a failure of
        # the dump is still the one reported when both fail.
        saved: list[tuple[list[firewall.Rule], dict[str, firewall.Chains]] | Exception] = []

        def read_rules() -> None:
            try:
                saved.append(firewall.read_rules())
            except Exception as e:  # raised below, in this thread
                saved.append(e)

        reader = threading.Thread(target=read_rules, daemon=True)
        reader.start()
        known = self._known(desired)
        try:
            with IpsetClient() as client:
                sets = client.list_sets(known)
        except NetlinkError as e:
            if e.errno == errno.EPERM:
                e.message += " (managing ipsets needs root, or CAP_NET_ADMIN)"
            raise
        finally:
            reader.join()
        if isinstance(saved[0], Exception):
            raise saved[0]
        rules, chains = saved[0]
        present: dict[str, bool] = {}
        errors: dict[str, str] = {}
        for name, spec in desired.ipsets.items():
            if spec.firewall is None or name not in sets:
                continue
            binary = firewall.binary_for(spec.family)
            try:
                present[name] = firewall.rule_exists(
                    binary,
                    spec.firewall.chain,
                    firewall.rule_spec(name, spec.firewall),
                    f"{KIND}/{name}",
                )
            except ProviderError as e:
                errors[name] = e.message
        ours = _checked_ours(self.state) if self.state else {}
        return IpsetLive(sets, tuple(rules), present, ours, ssh_client_address(), errors, chains)

    def _known(self, desired: HostDesired) -> dict[str, tuple[str | None, frozenset[str]]]:
        """The desired members of each set, with the digest of the dump that holds exactly
        them when the memo has it (the dump need not be decoded then), else None (decoded,
        and found equal or not)."""
        self._wanted = {
            name: (spec.members_digest, spec.members)
            for name, spec in desired.ipsets.items()
            if spec.members_digest is not None and not is_tombstone(spec)
        }
        if self._memo is None:  # the plan's read; the verify re-read has it already
            self._memo = dumpmemo.load(self.state.path) if self.state is not None else {}
        known: dict[str, tuple[str | None, frozenset[str]]] = {}
        for name, (digest, members) in self._wanted.items():
            entry = self._memo.get(name)
            known[name] = (entry[0] if entry is not None and entry[1] == digest else None, members)
        return known

    def _remember_dumps(self, live: IpsetLive) -> None:
        """Record each set whose re-read dump holds exactly its desired members (plain
        members: no nomatch or expiring entries) in the memo; a memo that cannot be
        written costs only time (the next run decodes)."""
        memo: dict[str, tuple[str, str]] = {}
        for name, (digest, members) in self._wanted.items():
            got = live.sets.get(name)
            if got is None or got.dump_digest is None or got.nomatch or got.expiring:
                continue
            if got.members is members or got.members == members:
                memo[name] = (got.dump_digest, digest)
        if memo != self._memo and self.state is not None:
            with contextlib.suppress(StateError):
                dumpmemo.save(self.state.path, memo)
                self._memo = memo

    # ----------------------------------------------------------------------------- diff
    def diff(self, desired: HostDesired, live: IpsetLive) -> tuple[list[Change], list[PlanError]]:
        """Compute changes for every desired set, every tombstone, every owned set that
        left git and every temporary set an interrupted run left, then judge the plan as a
        whole (prune-all, lockout). Pure."""
        changes: list[Change] = []
        errors: list[PlanError] = []
        other_backend = _other_backend_users(live)
        present = {n: s for n, s in desired.ipsets.items() if not is_tombstone(s)}
        tombstones = {n for n, s in desired.ipsets.items() if is_tombstone(s)}
        # Names a temporary set must not take: every set on the host, every one recorded as
        # ours (a pending create included) and every one git names.
        taken = set(live.sets) | set(live.ours) | set(desired.ipsets)
        for name in sorted(present):
            address = f"{KIND}/{name}"
            if name in live.errors:
                errors.append(PlanError(address, live.errors[name]))
                continue
            try:
                ch = self._diff_one(present[name], live, taken)
            except _PlanRefusal as e:
                errors.append(PlanError(address, str(e)))
                continue
            if ch is not None and name in other_backend:
                errors.append(PlanError(address, _other_backend_message(name, other_backend)))
                continue
            if ch is not None:
                changes.append(ch)
                taken |= _created(ch.ops)
        for name in sorted(tombstones | (set(live.ours) - set(desired.ipsets))):
            address = f"{KIND}/{name}"
            if name in live.sets and name in other_backend:
                errors.append(PlanError(address, _other_backend_message(name, other_backend)))
                continue
            try:
                ch = self._diff_delete(name, live, tombstone=name in tombstones)
            except _PlanRefusal as e:
                errors.append(PlanError(address, str(e)))
                continue
            if ch is not None:
                changes.append(ch)
        changes = self._refuse_prune_all(desired, live, changes)
        changes = self._guard_plan(desired, live, changes, tombstones)
        return changes, errors

    def notices(self, desired: HostDesired, live: IpsetLive) -> list[PlanWarning]:
        """What the plan says about desired sets even when they have no change: a set with a
        default timeout (git cannot give one; the members we add are permanent). Pure."""
        out: list[PlanWarning] = []
        for name, spec in sorted(desired.ipsets.items()):
            cur = live.sets.get(name)
            if is_tombstone(spec) or cur is None or cur.header.timeout is None:
                continue
            out.append(PlanWarning(f"{KIND}/{name}", _timeout_note(name, cur.header.timeout)))
        return out

    def _diff_one(self, spec: IpsetSpec, live: IpsetLive, taken: Collection[str]) -> Change | None:
        """The change of one desired set (None when it matches); _PlanRefusal when it cannot
        be planned safely (see :func:`_unmanageable`)."""
        name = spec.name
        cur = live.sets.get(name)
        rule_ops = [_rule_op("insert_rule", spec)] if spec.firewall else []
        if cur is None:
            return self._diff_create(spec, rule_ops)

        h = cur.header
        structural = [
            f
            for f, want, have in (
                ("type", spec.type, h.type),
                ("family", spec.family, h.family),
            )
            if want != have
        ]
        if cur.members is None and not structural:
            raise _PlanRefusal(f"cannot read the members of {h.type} set {name}")
        refusal_why = _unmanageable(name, cur)
        if refusal_why is not None:
            raise _PlanRefusal(refusal_why)
        live_members = cur.members if cur.members is not None else frozenset()
        # The very desired members (the dump memo found the dump they were read from): no
        # set difference of 65,536 members with itself.
        same = live_members is spec.members
        new = [] if same else sort_networks(spec.members - live_members)
        # Members git lists that the set holds with a timeout of their own would expire:
        # they are added again, permanent.
        renew = sort_networks(spec.members & cur.expiring)
        delete = [] if same else sort_networks(live_members - spec.members)
        need_rule = bool(spec.firewall) and not live.rule_present.get(name, False)
        sizing = []
        if spec.maxelem is not None and spec.maxelem != h.maxelem:
            sizing.append("maxelem")
        # hashsize is an initial size: the kernel rounds it up to a power of two and doubles
        # it as the set fills, so only a live hash smaller than asked for is a difference.
        if spec.hashsize is not None and (h.hashsize or 0) < spec.hashsize:
            sizing.append("hashsize")
        if not (new or renew or delete or structural or sizing or need_rule):
            return None

        refusal = self._guard(spec, cur)
        before = _header_dict(cur)
        after = spec_summary(spec)
        warnings: list[str] = []
        if h.timeout is not None:
            warnings.append(_timeout_note(name, h.timeout))
        if renew:
            warnings.append(
                f"{len(renew)} member(s) git lists are in set {name} with a timeout of their "
                f"own and would expire ({_some(renew)}): added again, permanent (timeout 0)"
            )
        if structural or sizing:
            return self._rebuild(
                spec, cur, live, taken, structural=structural, sizing=sizing, add=new,
                delete=delete, before=before, after=after, refusal=refusal,
                need_rule=need_rule, warnings=warnings,
            )  # fmt: skip
        early: list[str] = []
        maxelem = h.maxelem
        count = len(live_members)
        if maxelem is not None and count + len(new) > maxelem:
            overflow = count + len(new) - maxelem
            early, why_not = _deletes_first(new, delete, overflow, count, live.ssh_client)
            if why_not is not None:
                needed = max(maxelem, len(spec.members))
                if needed > maxelem:
                    needed = 1 << (needed - 1).bit_length()
                warnings.append(
                    f"adding {len(new)} member(s) to the {count} in set {name} before deleting "
                    f"would pass its maxelem {maxelem}, and deleting first {why_not}: the set "
                    f"is rebuilt in a temporary set (maxelem {needed}) that is swapped in"
                )
                return self._rebuild(
                    spec, cur, live, taken, structural=[], sizing=["fit"], add=new,
                    delete=delete, before=before, after=after, refusal=refusal,
                    need_rule=need_rule, warnings=warnings, maxelem=needed,
                )  # fmt: skip
            warnings.append(
                f"adding {len(new)} member(s) to the {count} in set {name} before deleting "
                f"would pass its maxelem {maxelem}: {len(early)} deletion(s) that no added "
                "member replaces go first, then the adds, then the other deletions"
            )
        timeout = {"timeout": 0} if h.timeout is not None else {}
        first = set(early)
        ops = member_ops("delete_member", early)
        adds = sort_networks(set(new) | set(renew)) if renew else new
        ops += member_ops("add_member", adds, **timeout)
        later = [m for m in delete if m not in first] if first else delete
        ops += member_ops("delete_member", later)
        if need_rule:
            ops += rule_ops
        return Change(
            KIND, name, "update", tuple(ops), before, after, refused=refusal,
            warnings=tuple(warnings),
        )  # fmt: skip

    def _diff_create(self, spec: IpsetSpec, rule_ops: list[Op]) -> Change:
        """The ``create`` change of a desired set the host does not have. When git leaves
        ``maxelem`` unset and its members pass the kernel's default, the set is made big
        enough (the next power of two), and the plan says so."""
        maxelem = spec.maxelem
        warnings: tuple[str, ...] = ()
        if maxelem is None and len(spec.members) > KERNEL_MAXELEM:
            maxelem = 1 << (len(spec.members) - 1).bit_length()
            warnings = (
                f"{len(spec.members)} members pass the kernel's default maxelem "
                f"{KERNEL_MAXELEM}, and git sets none: the set is created with maxelem "
                f"{maxelem}",
            )
        ops = [
            Op(
                "create_set",
                {
                    "set": spec.name,
                    "type": spec.type,
                    "family": spec.family,
                    "maxelem": maxelem,
                    "hashsize": spec.hashsize,
                },
            )
        ]
        ops += member_ops("add_member", sort_networks(spec.members))
        return Change(
            KIND, spec.name, "create", tuple(ops + rule_ops), None, spec_summary(spec),
            warnings=warnings,
        )  # fmt: skip

    def _rebuild(
        self,
        spec: IpsetSpec,
        cur: LiveSet,
        live: IpsetLive,
        taken: Collection[str],
        *,
        structural: list[str],
        sizing: list[str],
        add: list[str],
        delete: list[str],
        before: dict[str, Any],
        after: dict[str, Any],
        refusal: str | None,
        need_rule: bool,
        warnings: list[str],
        maxelem: int | None = None,
    ) -> Change:
        """The ``replace`` change for a set whose type/family (``structural``), maxelem/
        hashsize (``sizing``) differ, or whose delta does not fit its maxelem (``sizing`` is
        ``["fit"]``, ``maxelem`` the size to rebuild with): a temporary set of a name no set
        has (:func:`temp_name`) is filled with every desired member, then swapped in (rules
        keep matching) or, for a structural change, renamed over the destroyed old set.

        What git leaves unset keeps its live value in the temporary set: sizes, the default
        timeout (members are then added permanent), counters, comment and forceadd.
        _PlanRefusal when rules use a set whose type/family changes; the guard's
        ``refusal`` is kept on the change.
        """
        name = spec.name
        h = cur.header
        tmp = temp_name(name, taken)
        refs = h.references
        if structural and refs:
            users = [r.describe() for r in live.rules if r.set_name == name]
            raise _PlanRefusal(
                f"cannot change {' and '.join(structural)} of set {name} "
                f"({h.type} {h.family} -> {spec.type} {spec.family}) while "
                f"{refs} rule(s) use it: the kernel swaps only sets of the same type and "
                "family. Create a set under a new name, point the rules at it, then remove "
                "this one. Rules using it: " + ("; ".join(users) or "(not found in iptables)")
            )
        if maxelem is None:
            # What git leaves unset keeps its live value: a rebuild for another reason must
            # not shrink a set somebody sized by hand.
            maxelem = spec.maxelem if spec.maxelem is not None else h.maxelem
        create: dict[str, Any] = {
            "set": tmp,
            "type": spec.type,
            "family": spec.family,
            "maxelem": maxelem,
            "hashsize": spec.hashsize if spec.hashsize is not None else h.hashsize,
            "temporary_for": name,
        }
        timeout: dict[str, int] = {}
        if h.timeout is not None:
            create["timeout"] = h.timeout
            timeout = {"timeout": 0}
        if h.options:
            create["options"] = list(h.options)
            lost = [o for o in ("counters", "comment") if o in h.options]
            if lost:
                warnings.append(
                    f"set {name} keeps {' and '.join(lost)} per entry; the rebuilt set has "
                    f"the option{'s' if len(lost) > 1 else ''} but its entries start without "
                    f"{'them' if len(lost) > 1 else 'it'}"
                )
        ops: list[Op] = [Op("create_set", create)]
        ops.append(
            Op(
                "fill_set",
                {
                    "set": tmp,
                    "count": len(spec.members),
                    "members": sort_networks(spec.members),
                    **timeout,
                },
            )
        )
        if structural:
            # Nothing references the set, so it can be replaced outright.
            ops.append(Op("destroy_set", {"set": name}))
            ops.append(Op("rename_set", {"set": tmp, "to": name}))
        else:
            ops.append(Op("swap_sets", {"set": name, "with": tmp}))
            ops.append(Op("destroy_set", {"set": tmp}))
        if need_rule:
            ops.append(_rule_op("insert_rule", spec))
        after = dict(after, added=add, removed=delete, rebuilt_for=structural + sizing)
        if maxelem != spec.maxelem and "fit" in sizing:
            after["maxelem"] = maxelem
        return Change(
            KIND, name, "replace", tuple(ops), before, after, refused=refusal,
            warnings=tuple(warnings),
        )  # fmt: skip

    def _guard(self, spec: IpsetSpec, cur: LiveSet) -> str | None:
        """The reason to refuse this set's change on its own without ``force``, or None.
        (Whether the SSH client keeps access is judged on the whole plan: _guard_plan.)"""
        if self.force:
            return None
        live_members = cur.members or frozenset()
        if live_members and not spec.members:
            return (
                f"would empty set {spec.name} (it has {len(live_members)} members); "
                "use --force if that is really intended"
            )
        return None

    def _diff_delete(self, name: str, live: IpsetLive, *, tombstone: bool) -> Change | None:
        """Delete set ``name`` with the rules we inserted for it: a tombstone (``absent:
        true``), a set of ours that left git, or a temporary set an interrupted run left.
        None when it does not exist.

        _PlanRefusal when a rule we did not insert (or another reference) still uses it.
        A set that merely left git while an ACCEPT rule we manage uses it is refused: that
        deletion takes access away and needs the intent of a tombstone.
        """
        cur = live.sets.get(name)
        if cur is None:
            return None  # already gone (ownership is tidied after apply); a tombstone: no-op
        record = live.ours.get(name, {})
        ours_rules = [list(r) for r in record.get("rules", [])]
        live_users = [r for r in live.rules if r.set_name == name]
        ops: list[Op] = []
        mine: list[firewall.Rule] = []
        foreign: list[str] = []
        for r in live_users:
            words = r.words()
            if r.table == "filter" and any(
                r.binary == o[0] and r.chain == o[1] and firewall.same_rule(words, o[2:])
                for o in ours_rules
            ):
                mine.append(r)
                ops.append(Op("delete_rule", {"binary": r.binary, "chain": r.chain, "rule": words}))
            else:
                foreign.append(r.describe())
        unaccounted = cur.header.references - len(live_users)
        if foreign or unaccounted > 0:
            what = (
                "; ".join(foreign)
                if foreign
                else (
                    f"{cur.header.references} reference(s) not from iptables (another set or tool)"
                )
            )
            if tombstone:
                why = "is marked absent in git"
            elif is_temporary(record):
                why = f"is a temporary set reconciler made to rebuild {record['temporary_for']}"
            else:
                why = "was created by reconciler and has left git"
            raise _PlanRefusal(
                f"set {name} {why}, but is still in use, so it is kept: {what}. Remove those "
                "rules, and the next run deletes it"
            )
        refusal = None
        accepting = [r for r in mine if _target_accepts(r.target, live.chains.get(r.binary, {}))]
        if not tombstone and accepting:
            refusal = (
                f"{KIND}/{name} left git but an ACCEPT rule we manage uses it; mark it "
                f"`absent: true` to delete it (the rule: {accepting[0].describe()})"
            )
        destroy: dict[str, Any] = {"set": name}
        if is_temporary(record) and not tombstone:
            destroy["reason"] = (
                f"temporary set of {record['temporary_for']} left over from an interrupted run"
            )
        ops.append(Op("destroy_set", destroy))
        return Change(KIND, name, "delete", tuple(ops), _header_dict(cur), None, refused=refusal)

    def _refuse_prune_all(
        self, desired: HostDesired, live: IpsetLive, changes: list[Change]
    ) -> list[Change]:
        """Without ``allow_empty``, refuse the deletions of a plan made while git declares no
        ipsets at all: that is what a ``--repo`` pointing at the wrong directory looks like,
        and it would delete every set we own with its rules (Argo CD's ``allowEmpty``).
        The cleanup of a temporary set an interrupted run left is no such deletion."""
        if self.allow_empty or desired.ipsets:
            return changes

        def pruned(c: Change) -> bool:
            return c.action == "delete" and not is_temporary(live.ours.get(c.name, {}))

        deletes = [c.name for c in changes if pruned(c)]
        if not deletes:
            return changes
        why = (
            "git declares no ipsets, so this plan would delete every set reconciler owns "
            f"({', '.join(deletes)}) and the rules it inserted for them; refused without "
            "--allow-empty (check --repo: a wrong directory looks like this). Run with "
            "--allow-empty if no ipsets at all is really intended"
        )
        return [replace(c, refused=_joined(why, c.refused)) if pruned(c) else c for c in changes]

    def _guard_plan(
        self,
        desired: HostDesired,
        live: IpsetLive,
        changes: list[Change],
        tombstones: set[str],
    ) -> list[Change]:
        """The anti-lockout guard, on the plan as a whole.

        When the SSH client is accepted now by a rule we manage and would not be once every
        change that is not already refused is made, the changes that take that access away
        are refused (without ``force``). When it keeps access only through what the plan
        itself creates, the changes creating it go first and each removal starts with a
        ``require_applied`` op naming them: if one fails, the removal is not made.
        """
        client = normalise_client(live.ssh_client)
        if self.force or client is None:
            return changes
        addr = ipaddress.ip_address(client)
        binary = firewall.BINARIES["inet" if addr.version == 4 else "inet6"]
        chains = live.chains.get(binary, {})
        reach = _reachable(chains, "INPUT")
        managed = (
            {n for n in desired.ipsets if n not in tombstones}
            | (tombstones & set(live.sets))
            | set(live.ours)
        )

        def accepting(rule: firewall.Rule) -> bool:
            return (
                rule.binary == binary
                and rule.table == "filter"
                and rule.set_name in managed
                and rule.chain in reach
                and _matches_src(rule)
                and _target_accepts(rule.target, chains)
            )

        cover = _covering(addr)
        members_now = {n: s.members for n, s in live.sets.items() if s.members is not None}
        rules_now = {_key(r): r for r in live.rules if accepting(r)}
        before = {
            k for k, r in rules_now.items() if not cover.isdisjoint(members_now.get(r.set_name, ()))
        }
        if not before:
            return changes  # not accepted through our sets now: nothing of ours to lose

        members_after = dict(members_now)
        rules_after = dict(rules_now)
        for c in changes:
            if c.refused:
                continue  # never applied
            if c.action == "delete":
                members_after.pop(c.name, None)
                rules_after = {k: r for k, r in rules_after.items() if r.set_name != c.name}
                continue
            spec = desired.ipsets[c.name]
            members_after[c.name] = spec.members
            for op in c.ops:
                if op.op == "insert_rule" and op.args["binary"] == binary:
                    assert spec.firewall is not None
                    new = firewall.Rule(
                        binary, "filter", op.args["chain"], shlex.join(op.args["rule"]),
                        c.name, "src", spec.firewall.target,
                    )  # fmt: skip
                    if accepting(new):
                        rules_after[_key(new)] = new
        after = {
            k
            for k, r in rules_after.items()
            if r.set_name in members_after and not cover.isdisjoint(members_after[r.set_name])
        }
        lost = before - after
        if not lost or after & before:
            # Nothing taken away, or it keeps access it has now through a rule left alone.
            return changes
        removals = {k[3] for k in lost}  # the sets whose changes take access away
        if not after:
            out = []
            for c in changes:
                if c.name in removals and not c.refused:
                    rule = rules_now[min(k for k in lost if k[3] == c.name)]
                    c = replace(c, refused=_lockout_message(c, addr, rule))
                out.append(c)
            return out
        # It keeps access only through what this plan creates: that goes first, and the
        # removals require it applied.
        providers = sorted({f"{KIND}/{k[3]}" for k in after})
        reason = f"it keeps {addr}, the current SSH client (SSH_CONNECTION), accepted"
        require = tuple(Op("require_applied", {"needs": a, "reason": reason}) for a in providers)
        first = [c for c in changes if c.address in providers]
        rest = [
            replace(c, ops=require + c.ops) if c.name in removals and not c.refused else c
            for c in changes
            if c.address not in providers
        ]
        return first + rest

    # ---------------------------------------------------------------------------- apply
    def apply(self, change: Change) -> list[Op]:
        """Execute ``change``'s ops in order (consecutive member ops in one batch each).

        Returns the ops executed. Raises ProviderError on the first failure. Ownership is
        recorded in the state dir around each write that creates or removes something of
        ours (:meth:`_apply_one`), so whatever point the run stops at, even SIGKILL, the
        next run knows what is ours.
        """
        address = change.address
        done: list[Op] = []
        family = (change.after or change.before or {}).get("family", "inet")
        try:
            with IpsetClient() as client:
                ops = change.ops
                for i, j in batches(ops):
                    op = ops[i]
                    if op.op in MEMBER_OPS:
                        run = ops[i:j]
                        members = run_members(run)
                        if members is None:  # an op without a member: KeyError, a bug
                            members = [o.args["member"] for o in run]
                        timeout = op.args.get("timeout")
                        if op.op == "add_member":
                            client.add_members(change.name, family, members, timeout=timeout)
                        else:
                            client.delete_members(change.name, family, members)
                        done.extend(ops[i:j])
                        continue
                    self._apply_one(client, change, op, family)
                    done.append(op)
        except ProviderError as e:
            if e.address is None:
                e.address = address
            raise
        self._applied.add(address)
        return done

    def _apply_one(self, client: IpsetClient, change: Change, op: Op, family: str) -> None:
        """Execute one op that is not a member batch, with its ownership bookkeeping:

        * ``create_set``: the set is recorded as ours, with the intent "creating set X"
          ("creating temporary set T" for a rebuild's, marked ``temporary_for``), before the
          kernel creates it; the intent is confirmed after, and the record dropped if the
          kernel refused (it is then not ours);
        * ``insert_rule`` on a set of ours: the rule is recorded ("inserting rule R") before
          iptables inserts it, confirmed after, dropped from the record if iptables refused;
        * ``destroy_set``, ``rename_set``: the record of a name that no longer exists is
          dropped after the kernel's answer (a destroyed set that was ours, a temporary set
          destroyed or renamed into its set).

        A run killed between a record and its write leaves a record of something absent,
        which :meth:`forget_vanished` drops; never a created object without its record.
        """
        a = op.args
        address = change.address
        state = self.state
        if op.op == "require_applied":
            if a["needs"] not in self._applied:
                raise ProviderError(
                    f"not applied: it needs {a['needs']} applied first ({a['reason']}), "
                    "and that did not happen in this run",
                    address=address,
                )
        elif op.op == "create_set":
            set_name = a["set"]
            if state is not None:
                record: dict[str, Any] = {"created": _now(), "rules": []}
                intent = f"creating set {set_name}"
                if a.get("temporary_for"):
                    record["temporary_for"] = a["temporary_for"]
                    intent = f"creating temporary set {set_name} to rebuild {a['temporary_for']}"
                state.intend(KIND, set_name, intent, record)
            try:
                client.create(
                    set_name,
                    type=a["type"],
                    family=a["family"],
                    maxelem=a["maxelem"],
                    hashsize=a["hashsize"],
                    timeout=a.get("timeout"),
                    options=a.get("options", ()),
                )
            except ProviderError:
                if state is not None:
                    state.forget(KIND, set_name)  # the kernel made nothing: nothing is ours
                raise
            if state is not None:
                state.confirm(KIND, set_name)
        elif op.op == "fill_set":
            client.add_members(a["set"], family, a["members"], timeout=a.get("timeout"))
        elif op.op == "swap_sets":
            client.swap(a["set"], a["with"])
        elif op.op == "rename_set":
            client.rename(a["set"], a["to"])
            if state is not None:
                state.forget(KIND, a["set"])
        elif op.op == "destroy_set":
            client.destroy(a["set"])
            # A rebuild destroys the set itself only to rename its temporary set over it:
            # whose it is does not change.
            if state is not None and (a["set"] != change.name or change.action == "delete"):
                state.forget(KIND, a["set"])
        elif op.op == "insert_rule":
            self._insert_rule(change, a)
        elif op.op == "delete_rule":
            firewall.delete_rule(a["binary"], a["chain"], a["rule"], address)
        else:  # a plan from a newer version, or a bug: never guess
            raise ProviderError(f"unknown op {op.op!r}", address=address)

    def _insert_rule(self, change: Change, a: Mapping[str, Any]) -> None:
        """``insert_rule``: when the set is ours, record the rule first (see _apply_one)."""
        address = change.address
        state = self.state
        rule = [a["binary"], a["chain"], *a["rule"]]
        record = state.ours(KIND).get(change.name) if state is not None else None
        added = False
        if state is not None and record is not None:
            rules = [list(r) for r in record.get("rules", [])]
            if rule not in rules:
                added = True
                state.intend(
                    KIND,
                    change.name,
                    f"inserting rule {a['binary']} -I {a['chain']} {shlex.join(a['rule'])}",
                    {**record, "rules": [*rules, rule]},
                )
        try:
            if not firewall.rule_exists(a["binary"], a["chain"], a["rule"], address):
                firewall.insert_rule(a["binary"], a["chain"], a["rule"], address)
        except ProviderError:
            if state is not None and record is not None and added:
                state.intend(KIND, change.name, None, record)  # back to what it was
            raise
        if state is not None and record is not None:
            state.confirm(KIND, change.name)

    def forget_vanished(self, live: IpsetLive) -> None:
        """After the apply (``live`` is the re-read): drop the ownership records of sets that
        no longer exist (removed by hand, or a create a killed run announced and never made),
        and confirm the intents of those that do (a killed run's create that happened); and
        remember which dumps hold exactly the desired members (:mod:`.dumpmemo`)."""
        if self.state is None:
            return
        self._remember_dumps(live)
        ours = self.state.ours(KIND)
        kept = {
            n: {k: v for k, v in r.items() if k != INTENT}
            for n, r in ours.items()
            if n in live.sets
        }
        if kept != ours:
            self.state.set_ours(KIND, kept)


def _now() -> str:
    """The time recorded with a created set (UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _checked_ours(state: StateDir) -> dict[str, dict[str, Any]]:
    """Our ownership records of sets, each checked for the shape we write (``rules``: a list
    of argument lists): a hand-edited ``ours.json`` is a StateError naming the set, never a
    TypeError deep in the plan."""
    ours = state.ours(KIND)
    for name, record in ours.items():
        rules = record.get("rules", [])
        if not isinstance(rules, list) or not all(
            isinstance(r, list) and r and all(isinstance(a, str) for a in r) for r in rules
        ):
            raise StateError(
                f"{state.ours_file} is corrupt: the rules recorded for set {name!r} must be "
                "a list of iptables argument lists; restore it from backup, or remove the "
                "set's entry to forget its ownership (it is then never pruned)",
                address=f"{KIND}/{name}",
            )
    return ours


KERNEL_MAXELEM = 65536
"""The kernel's maxelem for a hash set created without one."""


def _unmanageable(name: str, cur: LiveSet) -> str | None:
    """Why the set ``name`` on the host cannot be managed from git, or None.

    * ``nomatch`` entries are exceptions (a packet they match does not match the set): git
      has no way to say them, and deleting them as members git does not list would let
      those networks match, so the set is refused;
    * ``skbinfo`` sets carry per entry a mark, priority and queue the SET target's
      ``--map-set`` gives packets: git cannot say them, and members reconciler adds would
      carry none.

    ``timeout``, ``counters``, ``comment`` and ``forceadd`` are managed (see the module
    docstring)."""
    if cur.nomatch:
        entries = _some(sort_networks(cur.nomatch))
        return (
            f"set {name} holds {len(cur.nomatch)} nomatch entr"
            f"{'y' if len(cur.nomatch) == 1 else 'ies'} ({entries}):"
            " exceptions that keep those networks from matching the set. Git cannot express "
            "nomatch, and deleting them as members git does not list would let those networks "
            "match, so the set is not changed. Delete them by hand (`ipset del "
            f"{name} NETWORK nomatch`) or take the set out of git"
        )
    if "skbinfo" in cur.header.options:
        return (
            f"set {name} was created with the skbinfo option: its entries carry the skbmark, "
            "skbprio and skbqueue the SET target's --map-set gives packets. Git cannot express "
            "them and the members reconciler adds would carry none, so the set is not changed. "
            "Recreate it without skbinfo, or take it out of git"
        )
    return None


def _timeout_note(name: str, timeout: int) -> str:
    """The plan's note about a set created with timeout support (git cannot give one)."""
    default = (
        f"a default timeout of {timeout} s: entries added without a timeout of their own expire"
        if timeout
        else "timeout support (default 0: entries expire only when added with a timeout)"
    )
    return (
        f"set {name} has {default}. Git cannot set a timeout: the members reconciler adds are "
        "permanent (timeout 0), and members git does not list are deleted as usual"
    )


def _some(items: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``items``, comma-separated, with how many more there are."""
    shown = ", ".join(items[:n])
    return shown if len(items) <= n else f"{shown} and {len(items) - n} more"


def _supernets(member: str) -> list[str]:
    """``member`` (canonical) and every network that contains it, as canonical strings."""
    net = ipaddress.ip_network(member)
    return [str(net.supernet(new_prefix=p)) for p in range(net.prefixlen + 1)]


def _deletes_first(
    new: Sequence[str],
    delete: Sequence[str],
    overflow: int,
    count: int,
    ssh_client: str | None,
) -> tuple[list[str], str | None]:
    """The ``overflow`` deletions that may go before the adds of a change that would
    otherwise pass the set's maxelem, or ([], why not).

    A deletion may go first only when nothing that stays accessible loses access for a
    moment: its network overlaps no added member (it is no replacement's predecessor), it
    does not hold the current SSH client, and the set is not emptied in between."""
    if overflow > len(delete):
        return [], "cannot make room (git lists more members than that)"
    if count - overflow <= 0:
        return [], "would leave it empty for a moment"
    added = set(new)
    above = {s for m in new for s in _supernets(m)}  # every network containing an added one
    client = normalise_client(ssh_client)
    cover = _covering(ipaddress.ip_address(client)) if client else frozenset()
    early: list[str] = []
    for d in delete:
        if d in above or d in cover or not added.isdisjoint(_supernets(d)):
            continue
        early.append(d)
        if len(early) == overflow:
            return early, None
    return [], (
        f"would drop, for a moment, networks that added members replace or that hold the SSH "
        f"client (only {len(early)} of the {overflow} deletions needed are neither)"
    )


RuleKey = tuple[str, str, str, str]
"""A rule as the guard tells rules apart: (binary, chain, spec, set)."""


def _key(rule: firewall.Rule) -> RuleKey:
    return (rule.binary, rule.chain, rule.spec, rule.set_name)


def _joined(*reasons: str | None) -> str:
    """Refusal reasons, the first first, each once."""
    out: list[str] = []
    for r in reasons:
        if r and r not in out:
            out.append(r)
    return "; ".join(out)


def _matches_src(rule: firewall.Rule) -> bool:
    """True when ``rule`` matches packets whose source is in its set: ``src`` as the first
    direction, and not negated (``! --match-set``)."""
    if rule.direction.split(",")[0] != "src":
        return False
    words = shlex.split(rule.spec)
    for i, w in enumerate(words[:-1]):
        if w == "--match-set" and words[i + 1] == rule.set_name:
            return not (i > 0 and words[i - 1] == "!")
    return True


def _target_accepts(
    target: str | None, chains: Mapping[str, Sequence[str]], seen: frozenset[str] = frozenset()
) -> bool:
    """True when a packet sent to ``target`` can be accepted: ``ACCEPT``, or a user chain
    with a rule that accepts (directly or through further user chains). Any ACCEPT in the
    chain counts, whatever else its rule matches."""
    if target == "ACCEPT":
        return True
    if target is None or target in seen or target not in chains:
        return False
    return any(_target_accepts(t, chains, seen | {target}) for t in chains[target])


def _reachable(chains: Mapping[str, Sequence[str]], start: str) -> set[str]:
    """``start`` and every chain its rules jump or go to, transitively."""
    found = {start}
    todo = [start]
    while todo:
        for t in chains.get(todo.pop(), ()):
            if t in chains and t not in found:
                found.add(t)
                todo.append(t)
    return found


def _other_backend_users(live: IpsetLive) -> dict[str, list[firewall.Rule]]:
    """Sets used by rules of the iptables backend reconciler does not write with."""
    out: dict[str, list[firewall.Rule]] = {}
    for r in live.rules:
        if firewall.is_other_backend(r.binary):
            out.setdefault(r.set_name, []).append(r)
    return out


def _other_backend_message(name: str, users: Mapping[str, Sequence[firewall.Rule]]) -> str:
    """The plan error of a set a rule of the other iptables backend uses."""
    rules = users[name]
    other = rules[0].binary
    ours = other.rsplit("-", 1)[0]
    return (
        f"set {name} is not changed while a rule of the other iptables backend uses it: "
        + "; ".join(r.describe() for r in rules)
        + f". reconciler writes its rules with `{ours}`, not `{other}`, and its guards "
        f"cannot vouch for rules it does not manage: recreate that rule with `{ours}` (or "
        "delete it), and the next run manages the set"
    )


def _lockout_message(
    change: Change, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, rule: firewall.Rule
) -> str:
    """Why ``change`` is refused: it takes away the SSH client's access through ``rule``."""
    who = f"{addr}, the address of the current SSH client (SSH_CONNECTION)"
    via = rule.describe()
    if rule.target != "ACCEPT":
        via += f" (its target {rule.target} accepts)"
    if change.action == "delete":
        return (
            f"deleting set {change.name} would drop {who}, which this rule accepts now: {via}; "
            "after the whole plan no rule we manage would accept it. Give it access through "
            "another set first, or use --force if that is really intended"
        )
    return (
        f"would drop {who}, from set {change.name}, which this ACCEPT rule uses: {via}; after "
        "the whole plan no rule we manage would accept it. Add it to the desired members or "
        "use --force"
    )


class _PlanRefusal(Exception):
    """A change that cannot be planned safely; becomes a PlanError for that resource."""
