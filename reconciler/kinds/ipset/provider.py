"""The ``ipset`` kind: management CIDRs in ``hash:net`` sets, updated in place by delta.

Safety rules (the ipset kind in ``docs/kinds.md``), each enforced here and tested:

* members change by delta only, adds before deletes, so a member present both before and after
  is never absent and a set that stays non-empty never becomes empty, even for a moment;
* a maxelem/hashsize change fills a temporary set and swaps it in atomically (``ipset swap``):
  rules reference sets by index, so they keep matching across the swap;
* the kernel only swaps sets of the same type and family, so a type or family change of a set
  a rule uses is a plan error (never a destroy); one no rule uses is rebuilt and renamed;
* without ``force``, a change that empties a set, or drops the current SSH client's address
  from a set an ACCEPT rule uses, is refused (shown in the plan, never applied);
* only sets in git or recorded as ours are touched; ours that left git are pruned unless a
  rule we did not insert still uses them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from reconciler.cidr import sort_key
from reconciler.errors import NetlinkError, ProviderError, StateError
from reconciler.kinds.ipset import firewall
from reconciler.kinds.ipset.against import spec_summary
from reconciler.kinds.ipset.netlink import IpsetClient, LiveSet
from reconciler.model import HostDesired, IpsetSpec
from reconciler.plan import Change, Op, PlanError
from reconciler.state import StateDir

KIND = "ipset"
TEMP_SUFFIX = "-rnew"  # temporary sets are <name[:26]>-rnew (the kernel allows 31 chars)


def temp_name(name: str) -> str:
    """The temporary set used to rebuild ``name`` (fits the kernel's 31-character limit)."""
    return f"{name[: 31 - len(TEMP_SUFFIX)]}{TEMP_SUFFIX}"


@dataclass(frozen=True)
class IpsetLive:
    """Everything ``diff`` needs, read from the host. Plain data, so golden tests can build it.

    ``rule_present`` says, per desired set with a ``firewall:`` rule, whether that rule exists.
    ``ours`` is the ownership record from the state dir; ``ssh_client`` the address from
    ``SSH_CONNECTION`` (None outside SSH).
    """

    sets: Mapping[str, LiveSet]
    rules: Sequence[firewall.Rule] = ()
    rule_present: Mapping[str, bool] = field(default_factory=dict)
    ours: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ssh_client: str | None = None
    errors: Mapping[str, str] = field(default_factory=dict)

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
    """The client address of the current SSH session, from ``SSH_CONNECTION``, or None."""
    env = os.environ if environ is None else environ
    parts = env.get("SSH_CONNECTION", "").split()
    if not parts:
        return None
    try:
        return str(ipaddress.ip_address(parts[0]))
    except ValueError:
        return None


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


def _contains(members: Iterable[str], addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    for m in members:
        net = ipaddress.ip_network(m)
        if net.version == addr.version and addr in net:
            return True
    return False


class IpsetProvider:
    """read / pure diff / apply for ipsets in the current network namespace."""

    kind = KIND

    def __init__(self, state: StateDir | None, *, force: bool = False) -> None:
        self.state = state
        self.force = force

    # ----------------------------------------------------------------------------- read
    def read(self, desired: HostDesired) -> IpsetLive:
        """Dump every set (one netlink dump), list rules using sets, check desired rules."""
        try:
            with IpsetClient() as client:
                sets = client.list_sets()
        except NetlinkError as e:
            if e.errno == errno.EPERM:
                e.message += " (managing ipsets needs root, or CAP_NET_ADMIN)"
            raise
        rules = firewall.list_set_rules()
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
        return IpsetLive(sets, tuple(rules), present, ours, ssh_client_address(), errors)

    # ----------------------------------------------------------------------------- diff
    def diff(self, desired: HostDesired, live: IpsetLive) -> tuple[list[Change], list[PlanError]]:
        """Compute changes for every desired set and every owned set that left git. Pure."""
        changes: list[Change] = []
        errors: list[PlanError] = []
        for name in sorted(desired.ipsets):
            address = f"{KIND}/{name}"
            if name in live.errors:
                errors.append(PlanError(address, live.errors[name]))
                continue
            try:
                ch = self._diff_one(desired.ipsets[name], live)
            except _PlanRefusal as e:
                errors.append(PlanError(address, str(e)))
                continue
            if ch is not None:
                changes.append(ch)
        for name in sorted(set(live.ours) - set(desired.ipsets)):
            try:
                ch = self._diff_prune(name, live)
            except _PlanRefusal as e:
                errors.append(PlanError(f"{KIND}/{name}", str(e)))
                continue
            if ch is not None:
                changes.append(ch)
        return changes, errors

    def _diff_one(self, spec: IpsetSpec, live: IpsetLive) -> Change | None:
        name = spec.name
        cur = live.sets.get(name)
        rule_ops = [_rule_op("insert_rule", spec)] if spec.firewall else []
        if cur is None:
            ops = [
                Op(
                    "create_set",
                    {
                        "set": name,
                        "type": spec.type,
                        "family": spec.family,
                        "maxelem": spec.maxelem,
                        "hashsize": spec.hashsize,
                    },
                )
            ]
            ops += [Op("add_member", {"member": m}) for m in sorted(spec.members, key=sort_key)]
            return Change(KIND, name, "create", tuple(ops + rule_ops), None, spec_summary(spec))

        h = cur.header
        live_members = cur.members if cur.members is not None else frozenset()
        add = sorted(spec.members - live_members, key=sort_key)
        delete = sorted(live_members - spec.members, key=sort_key)
        need_rule = bool(spec.firewall) and not live.rule_present.get(name, False)
        structural = [
            f
            for f, want, have in (
                ("type", spec.type, h.type),
                ("family", spec.family, h.family),
            )
            if want != have
        ]
        sizing = []
        if spec.maxelem is not None and spec.maxelem != h.maxelem:
            sizing.append("maxelem")
        # hashsize is an initial size: the kernel rounds it up to a power of two and doubles
        # it as the set fills, so only a live hash smaller than asked for is a difference.
        if spec.hashsize is not None and (h.hashsize or 0) < spec.hashsize:
            sizing.append("hashsize")
        if cur.members is None and not structural:
            raise _PlanRefusal(f"cannot read the members of {h.type} set {name}")
        if not (add or delete or structural or sizing or need_rule):
            return None

        refusal = self._guard(spec, cur, live, delete)
        before = _header_dict(cur)
        after = spec_summary(spec)
        if structural or sizing:
            return self._rebuild(
                spec, cur, live, structural, sizing, add, delete, before, after, refusal, need_rule
            )
        ops = [Op("add_member", {"member": m}) for m in add]
        ops += [Op("delete_member", {"member": m}) for m in delete]
        if need_rule:
            ops += rule_ops
        return Change(KIND, name, "update", tuple(ops), before, after, refused=refusal)

    def _rebuild(
        self,
        spec: IpsetSpec,
        cur: LiveSet,
        live: IpsetLive,
        structural: list[str],
        sizing: list[str],
        add: list[str],
        delete: list[str],
        before: dict[str, Any],
        after: dict[str, Any],
        refusal: str | None,
        need_rule: bool,
    ) -> Change:
        """The ``replace`` change for a set whose type/family (``structural``) or maxelem/
        hashsize (``sizing``) differ: a temporary set is filled with every desired member, then
        swapped in (sizing: rules keep matching) or, for a structural change, renamed over the
        destroyed old set. _PlanRefusal when rules use a set whose type/family changes, or a
        leftover temporary set is in use; the guard's ``refusal`` is kept on the change.
        """
        name = spec.name
        tmp = temp_name(name)
        refs = cur.header.references
        if structural and refs:
            users = [r.describe() for r in live.rules if r.set_name == name]
            raise _PlanRefusal(
                f"cannot change {' and '.join(structural)} of set {name} "
                f"({cur.header.type} {cur.header.family} -> {spec.type} {spec.family}) while "
                f"{refs} rule(s) use it: the kernel swaps only sets of the same type and "
                "family. Create a set under a new name, point the rules at it, then remove "
                "this one. Rules using it: " + ("; ".join(users) or "(not found in iptables)")
            )
        ops: list[Op] = []
        if tmp in live.sets:
            if live.sets[tmp].header.references:
                raise _PlanRefusal(f"temporary set {tmp} exists and is in use; remove it first")
            ops.append(Op("destroy_set", {"set": tmp, "reason": "left over from an earlier run"}))
        ops.append(
            Op(
                "create_set",
                {
                    "set": tmp,
                    "type": spec.type,
                    "family": spec.family,
                    # What git leaves unset keeps its live value: a rebuild for another
                    # reason must not shrink a set somebody sized by hand.
                    "maxelem": spec.maxelem if spec.maxelem is not None else cur.header.maxelem,
                    "hashsize": spec.hashsize if spec.hashsize is not None else cur.header.hashsize,
                },
            )
        )
        ops.append(
            Op(
                "fill_set",
                {
                    "set": tmp,
                    "count": len(spec.members),
                    "members": sorted(spec.members, key=sort_key),
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
        return Change(KIND, name, "replace", tuple(ops), before, after, refused=refusal)

    def _guard(
        self, spec: IpsetSpec, cur: LiveSet, live: IpsetLive, delete: Sequence[str]
    ) -> str | None:
        """The reason to refuse this change without ``force``, or None."""
        if self.force:
            return None
        live_members = cur.members or frozenset()
        if live_members and not spec.members:
            return (
                f"would empty set {spec.name} (it has {len(live_members)} members); "
                "use --force if that is really intended"
            )
        if not live.ssh_client or not delete:
            return None
        accept_rules = [
            r
            for r in live.rules
            if r.set_name == spec.name and r.target == "ACCEPT" and "src" in r.direction
        ]
        if not accept_rules:
            return None
        addr = ipaddress.ip_address(live.ssh_client)
        if _contains(delete, addr) and not _contains(spec.members, addr):
            return (
                f"would drop {addr}, the address of the current SSH client (SSH_CONNECTION), "
                f"from set {spec.name}, which this ACCEPT rule uses: "
                f"{accept_rules[0].describe()}; add it to the desired members or use --force"
            )
        return None

    def _diff_prune(self, name: str, live: IpsetLive) -> Change | None:
        cur = live.sets.get(name)
        if cur is None:
            return None  # already gone; ownership is tidied after apply
        ours_rules = [list(r) for r in live.ours[name].get("rules", [])]
        live_users = [r for r in live.rules if r.set_name == name]
        ops: list[Op] = []
        foreign: list[str] = []
        for r in live_users:
            spec_words = r.spec.split()
            mine = any(
                r.binary == o[0] and r.chain == o[1] and r.table == "filter" and spec_words == o[2:]
                for o in ours_rules
            )
            if mine:
                ops.append(
                    Op("delete_rule", {"binary": r.binary, "chain": r.chain, "rule": spec_words})
                )
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
            raise _PlanRefusal(
                f"set {name} was created by reconciler and has left git, but is still in use, "
                f"so it is kept: {what}. Remove those rules, and the next run deletes it"
            )
        refusal = None
        if not self.force and ops and live.ssh_client and cur.members:
            addr = ipaddress.ip_address(live.ssh_client)
            if _contains(cur.members, addr) and any(r.target == "ACCEPT" for r in live_users):
                refusal = (
                    f"deleting the ACCEPT rule for set {name} would drop {addr}, the current "
                    "SSH client; use --force if that is really intended"
                )
        ops.append(Op("destroy_set", {"set": name}))
        return Change(KIND, name, "delete", tuple(ops), _header_dict(cur), None, refused=refusal)

    # ---------------------------------------------------------------------------- apply
    def apply(self, change: Change) -> list[Op]:
        """Execute ``change``'s ops in order (consecutive member ops in one batch each).

        Returns the ops executed. Raises ProviderError on the first failure; ownership of
        what was created or deleted so far is recorded either way.
        """
        address = change.address
        done: list[Op] = []
        family = (change.after or change.before or {}).get("family", "inet")
        try:
            with IpsetClient() as client:
                i = 0
                ops = change.ops
                while i < len(ops):
                    op = ops[i]
                    if op.op in ("add_member", "delete_member"):
                        j = i
                        while j < len(ops) and ops[j].op == op.op:
                            j += 1
                        members = [o.args["member"] for o in ops[i:j]]
                        if op.op == "add_member":
                            client.add_members(change.name, family, members)
                        else:
                            client.delete_members(change.name, family, members)
                        done.extend(ops[i:j])
                        i = j
                        continue
                    self._apply_one(client, change, op, family)
                    done.append(op)
                    i += 1
        except ProviderError as e:
            if e.address is None:
                e.address = address
            raise
        finally:
            self._record_ownership(change, done)
        return done

    def _apply_one(self, client: IpsetClient, change: Change, op: Op, family: str) -> None:
        a = op.args
        address = change.address
        if op.op == "create_set":
            client.create(
                a["set"],
                type=a["type"],
                family=a["family"],
                maxelem=a["maxelem"],
                hashsize=a["hashsize"],
            )
        elif op.op == "fill_set":
            client.add_members(a["set"], family, a["members"])
        elif op.op == "swap_sets":
            client.swap(a["set"], a["with"])
        elif op.op == "rename_set":
            client.rename(a["set"], a["to"])
        elif op.op == "destroy_set":
            client.destroy(a["set"])
        elif op.op == "insert_rule":
            if not firewall.rule_exists(a["binary"], a["chain"], a["rule"], address):
                firewall.insert_rule(a["binary"], a["chain"], a["rule"], address)
        elif op.op == "delete_rule":
            firewall.delete_rule(a["binary"], a["chain"], a["rule"], address)
        else:  # a plan from a newer version, or a bug: never guess
            raise ProviderError(f"unknown op {op.op!r}", address=address)

    def _record_ownership(self, change: Change, done: Sequence[Op]) -> None:
        if self.state is None or not done:
            return
        ours = self.state.ours(KIND)
        name = change.name
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for op in done:
            a = op.args
            if op.op == "create_set" and a["set"] == name:
                ours[name] = {"created": now, "rules": []}
            elif op.op == "destroy_set" and a["set"] == name and change.action == "delete":
                ours.pop(name, None)
            elif op.op == "insert_rule" and name in ours:
                rule = [a["binary"], a["chain"], *a["rule"]]
                rules = ours[name].setdefault("rules", [])
                if rule not in rules:
                    rules.append(rule)
        self.state.set_ours(KIND, ours)

    def forget_vanished(self, live: IpsetLive) -> None:
        """Drop ownership records of sets that no longer exist (removed by hand)."""
        if self.state is None:
            return
        ours = self.state.ours(KIND)
        kept = {n: r for n, r in ours.items() if n in live.sets}
        if kept != ours:
            self.state.set_ours(KIND, kept)


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


class _PlanRefusal(Exception):
    """A change that cannot be planned safely; becomes a PlanError for that resource."""
