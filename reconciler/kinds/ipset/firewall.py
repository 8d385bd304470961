"""iptables rules that use ipsets: find them, check, insert and delete them.

iptables is driven through its command line with argument lists (never a shell string) and
``-w 10``: when another tool holds the xtables lock we wait for it, but at most 10 seconds
(iptables then exits with its own "Another app is currently holding the xtables lock"), and
every call is killed after 30 seconds (:mod:`reconciler.runner`), so a wedged iptables can
never hang a run.
Reads use ``iptables-save`` so that rules in every table are seen, which is what matters when
deciding whether a set is still in use or whether an ACCEPT rule depends on it.

Two iptables backends can hold rules at the same time: nf_tables (``iptables-nft``) and the
legacy xtables (``iptables-legacy``); Debian ships both, and ``iptables`` is the one the
alternatives system points at. reconciler writes with ``iptables`` only, but reads both when
both are installed (:func:`read_rules`): a rule made with the other one still matches packets
and still uses our sets. Rules of the other backend are named by its binary
(``iptables-legacy``), so a message about one is a command a sysadmin can paste.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Mapping
from typing import NamedTuple

from reconciler import runner
from reconciler.errors import CommandError
from reconciler.model import Family, FirewallRule

BINARIES: dict[str, str] = {"inet": "iptables", "inet6": "ip6tables"}
BACKENDS = ("nft", "legacy")
"""The iptables backends: nf_tables and the legacy xtables."""

XTABLES_WAIT = 10
"""Seconds iptables waits for the xtables lock (``-w``) before it gives up with an error."""
TIMEOUT = 30.0
"""Seconds one iptables or iptables-save call may take before it is killed: above
XTABLES_WAIT, so a lock held too long ends as iptables' own message rather than a kill."""
_WAIT = ["-w", str(XTABLES_WAIT)]


class Rule(NamedTuple):
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

    def words(self) -> list[str]:
        """The rule's arguments after the chain, as iptables-save printed them, unquoted: the
        argument list to compare with a recorded one or to pass to ``iptables -D``."""
        return shlex.split(self.spec)


Chains = Mapping[str, tuple[str, ...]]
"""A filter table's jumps: chain -> the targets its rules jump or go to that matter for
deciding whether a packet is accepted (``ACCEPT`` and user chains), sorted, each once."""


def binary_for(family: Family) -> str:
    """The iptables binary that handles rules for sets of ``family``."""
    return BINARIES[family]


def rule_spec(set_name: str, fw: FirewallRule) -> list[str]:
    """The rule arguments after the chain, as a list: ``[[!] -i IF] -m set --match-set S src
    -j T``, in the order and form ``iptables-save`` prints them, so a rule read back compares
    equal (:func:`same_rule`).

    ``in_interface`` ``!eth0`` is every interface but eth0, written ``! -i eth0`` as
    iptables(8) documents it (``-i !eth0`` would name an interface called "!eth0");
    ``eth+`` is every interface whose name starts with eth, as iptables takes it.
    """
    args: list[str] = []
    if fw.in_interface:
        iface = fw.in_interface
        if iface.startswith("!"):
            args += ["!", "-i", iface[1:]]
        else:
            args += ["-i", iface]
    args += ["-m", "set", "--match-set", set_name, "src", "-j", fw.target]
    return args


def same_rule(live: list[str], recorded: list[str]) -> bool:
    """True when a live rule's arguments (:meth:`Rule.words`) are the ``recorded`` ones we
    inserted: compared as argument lists, so quoting in iptables-save's text (``'!eth0'``)
    never hides our own rule. A rule recorded by an earlier version as ``-i !eth0`` is the
    literal rule iptables made of it, which iptables-save prints the same way."""
    return live == recorded


def _iptables(argv: list[str], address: str | None) -> subprocess.CompletedProcess[str]:
    """Run one iptables/ip6tables/iptables-save command; CommandError when it is not
    installed or runs past TIMEOUT (a non-zero exit is the caller's to word)."""
    return runner.run(argv, text=True, timeout=TIMEOUT, address=address)


def list_set_rules(binaries: tuple[str, ...] = ("iptables", "ip6tables")) -> list[Rule]:
    """Every rule, in every table, that matches on an ipset, for the given binaries (the
    backend each of them uses; :func:`read_rules` reads the other backend too).

    A binary that is not installed contributes nothing (it cannot have rules).
    """
    return read_rules(binaries, other_backend=False)[0]


def backend_of(binary: str) -> str:
    """The backend ``binary`` (``iptables``, ``ip6tables``) uses here: ``nft`` or ``legacy``.

    Debian's alternatives link ``iptables`` to ``xtables-nft-multi`` or
    ``xtables-legacy-multi``, which the link's target says without running anything;
    otherwise ``binary -V`` does (``iptables v1.8.9 (nf_tables)``; before 1.8 there was no
    nf_tables backend, and no backend in the version line).
    """
    path = shutil.which(binary)
    if path is None:
        return "legacy"
    real = os.path.basename(os.path.realpath(path))
    for backend in BACKENDS:
        if backend in real:
            return backend
    proc = _iptables([binary, "-V"], None)
    return "nft" if "nf_tables" in proc.stdout else "legacy"


def other_backend_binary(binary: str) -> str:
    """The name of ``binary`` for the backend it does not use: ``iptables-legacy`` when
    ``iptables`` is nf_tables, ``iptables-nft`` when it is legacy."""
    backend = backend_of(binary)
    return f"{binary}-{'legacy' if backend == 'nft' else 'nft'}"


def is_other_backend(binary: str) -> bool:
    """True for a rule read from the backend reconciler does not write with
    (``iptables-legacy``, ``ip6tables-nft`` ...)."""
    return binary not in BINARIES.values()


def _save(save: str) -> str:
    proc = _iptables([save], None)
    if proc.returncode != 0:
        raise CommandError(f"{save} failed: {proc.stderr.strip()}")
    return proc.stdout


def read_rules(
    binaries: tuple[str, ...] = ("iptables", "ip6tables"), *, other_backend: bool = True
) -> tuple[list[Rule], dict[str, Chains]]:
    """The rules that match on an ipset (every table) and the filter table's jumps
    (:func:`parse_chains`), per binary.

    ``binary-save`` reads the backend ``binary`` uses. With ``other_backend`` (and when it
    is installed: ``iptables-legacy-save`` next to an nf_tables ``iptables``, or
    ``iptables-nft-save`` next to a legacy one) the other backend is read too, its rules
    and jumps under its own binary's name (``iptables-legacy``). A binary that is not
    installed contributes nothing (it cannot have rules).
    """
    # Which saves to run is decided first; they then run at once (each is a process of its
    # own, ~15 ms of start-up): the outputs, and the first failure in this order, are the
    # same as one after the other.
    readers: list[str] = []
    for binary in binaries:
        if shutil.which(f"{binary}-save") is None:
            continue
        readers.append(binary)
        if not other_backend or shutil.which(binary) is None:
            continue
        other = other_backend_binary(binary)
        if shutil.which(f"{other}-save") is not None:
            readers.append(other)
    # A legacy backend with no table in this network namespace has no rule, and its save
    # prints nothing: that is known from /proc without starting it (a process less each).
    run = [b for b in readers if not _no_legacy_tables(b)]
    saved = dict(zip(run, _save_all([f"{b}-save" for b in run]), strict=True))
    texts = [saved.get(b, "") for b in readers]
    rules: list[Rule] = []
    chains: dict[str, Chains] = {}
    for binary, text in zip(readers, texts, strict=True):
        rules.extend(parse_save(binary, text))
        chains[binary] = parse_chains(text)
    return rules, chains


#: The legacy xtables' tables of this network namespace, by family (one name a line): the
#: calling thread's namespace, which a save it starts runs in (a thread may have entered one).
LEGACY_TABLES = {
    "iptables": "/proc/thread-self/net/ip_tables_names",
    "ip6tables": "/proc/thread-self/net/ip6_tables_names",
}


def _no_legacy_tables(binary: str) -> bool:
    """True when ``binary`` (``iptables``, ``ip6tables-legacy`` ...) is the legacy backend
    and the kernel lists no legacy table in this namespace (the file there and empty): its
    save would print nothing. False whenever that is not certain."""
    family = binary.removesuffix("-legacy").removesuffix("-nft")
    names = LEGACY_TABLES.get(family)
    if names is None or binary.endswith("-nft"):
        return False
    if not binary.endswith("-legacy") and backend_of(binary) != "legacy":
        return False
    try:
        with open(names, "rb") as f:
            return not f.read(1)
    except OSError:
        return False


def _save_all(saves: list[str]) -> list[str]:
    """The output of each save command, run concurrently; the first failure (in list
    order) is raised once all have ended."""
    results: list[str | Exception | None] = [None] * len(saves)

    def one(i: int) -> None:
        try:
            results[i] = _save(saves[i])
        except Exception as e:  # raised in the caller's thread below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(1, len(saves))]
    for t in threads:
        t.start()
    if saves:
        one(0)
    for t in threads:
        t.join()
    out: list[str] = []
    for r in results:
        if isinstance(r, Exception):
            raise r
        assert r is not None
        out.append(r)
    return out


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


def _target(words: list[str]) -> str | None:
    """The target a rule jumps (``-j``) or goes (``-g``) to, or None."""
    for i, w in enumerate(words[:-1]):
        if w in ("-j", "--jump", "-g", "--goto"):
            return words[i + 1]
    return None


def parse_chains(text: str) -> dict[str, tuple[str, ...]]:
    """The filter table's chains of ``iptables-save`` (or ``iptables -S``) output, each with
    the targets of its rules that can accept a packet: ``ACCEPT`` and user chains.

    Which chains INPUT reaches, and whether a rule's target accepts (directly, or through a
    user chain that does), follow from this (:mod:`reconciler.kinds.ipset.provider`).
    """
    declared: dict[str, set[str]] = {}
    table = "filter"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if table != "filter":
            continue
        if line.startswith(":"):
            declared.setdefault(line[1:].split()[0], set())
        elif line.startswith(("-N ", "-P ")):
            declared.setdefault(line.split()[1], set())
        elif line.startswith("-A "):
            # Quotes only come with comments and log prefixes: split those properly.
            words = shlex.split(line) if '"' in line or "'" in line else line.split()
            if len(words) < 2:
                continue
            targets = declared.setdefault(words[1], set())
            target = _target(words)
            if target is not None:
                targets.add(target)
    return {
        chain: tuple(sorted(t for t in targets if t == "ACCEPT" or t in declared))
        for chain, targets in declared.items()
    }


def rule_exists(binary: str, chain: str, spec: list[str], address: str) -> bool:
    """True when ``binary -C chain spec`` finds the rule in the filter table."""
    proc = _iptables([binary, *_WAIT, "-C", chain, *spec], address)
    if proc.returncode == 0:
        return True
    # iptables -C exits 1 with "does a matching rule exist" / "Bad rule" when absent (the
    # legacy backend says "No chain/target/match by that name" when the absent rule jumps to
    # a user chain); anything else (exit 2: no such target, no such set ...) is a real error
    # worth reporting. A chain that does not exist reads as an absent rule, and inserting it
    # then fails with iptables' own message.
    msg = proc.stderr.strip()
    if proc.returncode == 1 and (
        "does a matching rule exist" in msg
        or "Bad rule" in msg
        or "No chain/target/match by that name" in msg
        or msg == ""
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
