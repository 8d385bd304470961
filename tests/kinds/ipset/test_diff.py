"""Golden cases for the ipset provider's pure diff: {desired, live, expected ops} as data.

Each file in tests/kinds/ipset/golden/ holds the desired YAML (loaded through the real loader, so
canonicalisation is covered end to end), a description of live state, and the expected
changes and errors. No root needed: diff is pure.

Live state keys: ``sets`` (name -> header fields, among them ``timeout`` and ``options``,
and ``members``, ``nomatch``, ``expiring``), ``rules`` (rules that use sets; ``binary:
iptables-legacy`` for the other backend's), ``rule_present``, ``ours``, ``ssh_client`` and
``chains`` (binary -> chain -> the targets its rules jump to). A case may set ``force`` and
``allow_empty`` (the provider's options). A change may list ``warnings``: substrings, one per
warning it must carry, in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import desired as desired_mod
from reconciler.kinds.ipset.firewall import Rule
from reconciler.kinds.ipset.netlink import LiveSet, SetHeader
from reconciler.kinds.ipset.provider import IpsetLive, IpsetProvider
from tests import golden

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("*.yaml"))


def _live(data: dict[str, Any]) -> IpsetLive:
    sets = {}
    for name, s in (data.get("sets") or {}).items():
        members = s.get("members")
        header = SetHeader(
            name=name,
            type=s.get("type", "hash:net"),
            family=s.get("family", "inet"),
            revision=s.get("revision", 7),
            hashsize=s.get("hashsize", 1024),
            maxelem=s.get("maxelem", 65536),
            references=s.get("references", 0),
            elements=len(members or []) + len(s.get("nomatch", [])),
            timeout=s.get("timeout"),
            options=tuple(sorted(s.get("options", ()))),
        )
        sets[name] = LiveSet(
            header,
            None if members is None else frozenset(members),
            nomatch=frozenset(s.get("nomatch", ())),
            expiring=frozenset(s.get("expiring", ())),
        )
    rules = tuple(
        Rule(r["binary"], r["table"], r["chain"], r["spec"], r["set"], r["direction"], r["target"])
        for r in data.get("rules") or []
    )
    return IpsetLive(
        sets=sets,
        rules=rules,
        rule_present=data.get("rule_present") or {},
        ours=data.get("ours") or {},
        ssh_client=data.get("ssh_client"),
        chains={
            binary: {chain: tuple(targets) for chain, targets in chains.items()}
            for binary, chains in (data.get("chains") or {}).items()
        },
    )


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden(case: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(case.read_text())
    (tmp_path / "fleet.yaml").write_text(data["desired"])
    desired = desired_mod.load_host(tmp_path, "h1")
    provider = IpsetProvider(
        None, force=bool(data.get("force")), allow_empty=bool(data.get("allow_empty"))
    )
    changes, errors = provider.diff(desired, _live(data["live"]))

    for want, have in golden.check(data["expected"], changes, errors):
        if "warnings" in want:
            got = have.get("warnings", [])
            assert len(got) == len(want["warnings"]), got
            for w, h in zip(want["warnings"], got, strict=True):
                assert w in h, (w, h)


def test_diff_is_pure(tmp_path: Path) -> None:
    """Diff leaves its inputs unchanged and gives the same answer twice."""
    data = yaml.safe_load((GOLDEN / "update_delta.yaml").read_text())
    (tmp_path / "fleet.yaml").write_text(data["desired"])
    desired = desired_mod.load_host(tmp_path, "h1")
    live = _live(data["live"])
    before = (dict(desired.ipsets), dict(live.sets))
    p = IpsetProvider(None)
    first = p.diff(desired, live)
    assert p.diff(desired, live) == first
    assert (dict(desired.ipsets), dict(live.sets)) == before
