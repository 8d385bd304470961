"""iptables rules that use ipsets: find them, check, insert and delete them.

iptables is driven through its command line with argument lists (never a shell string) and
``-w 10``: when another tool holds the xtables lock we wait for it, but at most 10 seconds
(iptables then exits with its own "Another app is currently holding the xtables lock"), and
every call is killed after 30 seconds (:mod:`reconciler.runner`), so a wedged iptables can
never hang a run.
Reads use ``iptables-save`` so that rules in every table are seen, which is what matters when
deciding whether a set is still in use or whether an ACCEPT rule depends on it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass

from reconciler import runner
from reconciler.errors import CommandError
from reconciler.model import Family, FirewallRule

BINARIES: dict[str, str] = {"inet": "iptables", "inet6": "ip6tables"}

XTABLES_WAIT = 10
"""Seconds iptables waits for the xtables lock (``-w``) before it gives up with an error."""
TIMEOUT = 30.0
"""Seconds one iptables or iptables-save call may take before it is killed: above
XTABLES_WAIT, so a lock held too long ends as iptables' own message rather than a kill."""
_WAIT = ["-w", str(XTABLES_WAIT)]


@dataclass(frozen=True)
class Rule:
    """One live rule that references an ipset with ``-m set --match-set``."""

    binary: str
    table: str
    chain: str
    spec: str  # the rule as iptables-save prints it, without "-A CHAIN"
    set_name: str
    direction: str  # "src", "dst", "src,dst" ...
    target: str | None

    def describe(self) -> str:
        """A one-line description a sysadmin can paste: ``iptables -t filter -A INPUT ...``."""
        return f"{self.binary} -t {self.table} -A {self.chain} {self.spec}"


def binary_for(family: Family) -> str:
    """The iptables binary that handles rules for sets of ``family``."""
    return BINARIES[family]


def rule_spec(set_name: str, fw: FirewallRule) -> list[str]:
    """The rule arguments after the chain, as a list: ``[-i IF] -m set --match-set S src -j T``."""
    args: list[str] = []
    if fw.in_interface:
        args += ["-i", fw.in_interface]
    args += ["-m", "set", "--match-set", set_name, "src", "-j", fw.target]
    return args


def _iptables(argv: list[str], address: str | None) -> subprocess.CompletedProcess[str]:
    """Run one iptables/ip6tables/iptables-save command; CommandError when it is not
    installed or runs past TIMEOUT (a non-zero exit is the caller's to word)."""
    return runner.run(argv, text=True, timeout=TIMEOUT, address=address)


def list_set_rules(binaries: tuple[str, ...] = ("iptables", "ip6tables")) -> list[Rule]:
    """Every rule, in every table, that matches on an ipset, for the given binaries.

    A binary that is not installed contributes nothing (it cannot have rules).
    """
    rules: list[Rule] = []
    for binary in binaries:
        save = f"{binary}-save"
        if shutil.which(save) is None:
            continue
        proc = _iptables([save], None)
        if proc.returncode != 0:
            raise CommandError(f"{save} failed: {proc.stderr.strip()}")
        rules.extend(parse_save(binary, proc.stdout))
    return rules


def parse_save(binary: str, text: str) -> list[Rule]:
    """Parse ``iptables-save`` output into the rules that use ``--match-set``."""
    rules: list[Rule] = []
    table = "filter"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if not line.startswith("-A ") or "--match-set" not in line:
            continue
        words = shlex.split(line)
        chain = words[1]
        target = words[words.index("-j") + 1] if "-j" in words else None
        spec = shlex.join(words[2:])
        for i, w in enumerate(words):
            if w == "--match-set" and i + 2 < len(words):
                rules.append(Rule(binary, table, chain, spec, words[i + 1], words[i + 2], target))
    return rules


def rule_exists(binary: str, chain: str, spec: list[str], address: str) -> bool:
    """True when ``binary -C chain spec`` finds the rule in the filter table."""
    proc = _iptables([binary, *_WAIT, "-C", chain, *spec], address)
    if proc.returncode == 0:
        return True
    # iptables -C exits 1 with "does a matching rule exist" / "Bad rule" when absent; anything
    # else (no such chain, no such set, ...) is a real error worth reporting.
    msg = proc.stderr.strip()
    if proc.returncode == 1 and (
        "does a matching rule exist" in msg or "Bad rule" in msg or msg == ""
    ):
        return False
    raise CommandError(f"{binary} -C {chain} {shlex.join(spec)}: {msg}", address=address)


def insert_rule(binary: str, chain: str, spec: list[str], address: str) -> None:
    """Insert the rule at the top of ``chain`` (``-I``), so it takes effect before any DROP."""
    proc = _iptables([binary, *_WAIT, "-I", chain, *spec], address)
    if proc.returncode != 0:
        raise CommandError(
            f"{binary} -I {chain} {shlex.join(spec)} failed: {proc.stderr.strip()}",
            address=address,
        )


def delete_rule(binary: str, chain: str, spec: list[str], address: str) -> None:
    """Delete one instance of the rule (``-D``); a rule already gone is not an error."""
    if not rule_exists(binary, chain, spec, address):
        return
    proc = _iptables([binary, *_WAIT, "-D", chain, *spec], address)
    if proc.returncode != 0:
        raise CommandError(
            f"{binary} -D {chain} {shlex.join(spec)} failed: {proc.stderr.strip()}",
            address=address,
        )
