"""``members_from:``: an ipset's members read from list files of the repository.

The loader's answers (members merged with inline ones, problems located in the list file
with the set's path), the refusals of anything outside the repository (absolute paths,
``..``, symbolic links, directories, FIFOs, hard links) without a byte of what they name
in the output, the real command line (``validate``, the CI dry-run ``--against``), and a
real apply in a network namespace followed by a no-op dry-run.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import desired
from reconciler.cidr import parse_network
from reconciler.errors import Problem, ValidationError
from reconciler.kinds.ipset import lists
from tests import hostcfg
from tests.clirun import reconcile
from tests.kinds.ipset.test_kernel import Host
from tests.netns import Netns
from tests.test_cidr import octet, prefix4
from tests.test_gitsource import GIT_ENV, git

SECRET = "s3cr3t-line-that-must-never-be-printed"


def make_repo(root: Path, fleet: str, files: Mapping[str, str | bytes]) -> Path:
    """A desired-state directory with ``fleet.yaml``, host ``a`` and the files given."""
    repo = root / "repo"
    (repo / "hosts").mkdir(parents=True)
    (repo / "hosts" / "a.yaml").write_text("{}\n")
    (repo / "fleet.yaml").write_text(textwrap.dedent(fleet))
    for rel, content in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(content.encode() if isinstance(content, str) else content)
    return repo


def problems(repo: Path) -> list[str]:
    return [str(p) for p in desired.validate_repo(repo)]


MGMT_FROM = """\
ipsets:
  mgmt:
    type: hash:net
    members_from: lists/mgmt.txt
"""


def test_comments_blank_lines_and_inline_members_merge(tmp_path: Path) -> None:
    fleet = """\
    ipsets:
      mgmt:
        type: hash:net
        members: [192.0.2.0/24, 203.0.113.7]
        members_from: [lists/office.netset, lists/vpn.txt]
      six:
        type: hash:net
        family: inet6
        members_from: lists/six.txt
    """
    office = (
        "\ufeff# office networks (FireHOL .netset style)\n"
        "#\n"
        "198.51.100.0/24\n"
        "   10.20.0.0/16   # the lab, with a trailing comment\r\n"
        "\n"
        "\t\n"
        "192.0.2.0/24 # also inline: a set is a set\n"
        "203.0.113.9\n"
    )
    vpn = "# vpn\n10.20.0.0/16\n100.64.0.0/10\n"  # 10.20/16 again, in another list
    six = "2001:DB8:0::/48\n2001:db8:1::1 # one host\n"
    repo = make_repo(
        tmp_path,
        fleet,
        {"lists/office.netset": office, "lists/vpn.txt": vpn, "lists/six.txt": six},
    )
    assert problems(repo) == []
    host = desired.load_host(repo, "a")
    assert host.ipsets["mgmt"].members == {
        "192.0.2.0/24",
        "203.0.113.7/32",
        "198.51.100.0/24",
        "10.20.0.0/16",
        "203.0.113.9/32",
        "100.64.0.0/10",
    }
    assert host.ipsets["six"].members == {"2001:db8::/48", "2001:db8:1::1/128"}


def test_a_list_alone_and_an_empty_list(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, MGMT_FROM, {"lists/mgmt.txt": "# nothing yet\n"})
    assert problems(repo) == []
    assert desired.load_host(repo, "a").ipsets["mgmt"].members == frozenset()


def test_problems_name_the_list_file_line_and_set(tmp_path: Path) -> None:
    lines = [
        "# mgmt",  # 1
        "10.0.0.0/8",  # 2
        "10.0.0.1/8",  # 3: host bits
        "  192.0.2.300  # typo",  # 4: invalid, column 3
        "0.0.0.0/0",  # 5
        "10.0.0.0/8",  # 6: the same as line 2
        "10.0.0.0/08",  # 7: the same network again, spelled otherwise
        "2001:db8::/32",  # 8: the other family
        "192.0.2.1 192.0.2.2",  # 9: two on one line
    ]
    repo = make_repo(tmp_path, MGMT_FROM, {"lists/mgmt.txt": "\n".join(lines) + "\n"})
    where = "ipsets.mgmt.members_from"
    assert problems(repo) == [
        f"lists/mgmt.txt:3:1: {where}: 10.0.0.1/8: host bits set; did you mean 10.0.0.1/32 "
        "or 10.0.0.0/8?",
        f"lists/mgmt.txt:4:3: {where}: not a valid IP network: '192.0.2.300'",
        f"lists/mgmt.txt:5:1: {where}: the kernel rejects /0 in hash:net; split it into two "
        "/1 networks (0.0.0.0/1 and 128.0.0.0/1)",
        f"lists/mgmt.txt:6:1: {where}: 10.0.0.0/8 is the same network as 10.0.0.0/8 on line 2 "
        "(both are 10.0.0.0/8)",
        f"lists/mgmt.txt:7:1: {where}: 10.0.0.0/08 is the same network as 10.0.0.0/8 on line 2 "
        "(both are 10.0.0.0/8)",
        f"lists/mgmt.txt:8:1: {where}: IPv6 network 2001:db8::/32 in an inet set; put it in a "
        "set with family: inet6",
        f"lists/mgmt.txt:9:1: {where}: not a valid IP network: '192.0.2.1 192.0.2.2' "
        "(one network per line)",
    ]
    with pytest.raises(ValidationError):
        desired.load_host(repo, "a")


def test_the_cli_reports_them_and_applies_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, MGMT_FROM, {"lists/mgmt.txt": "10.0.0.0/8\n10.0.0.1/8\n"})
    r = reconcile("validate", "--repo", str(repo))
    assert r.returncode == 1
    assert (
        "lists/mgmt.txt:2:1: ipsets.mgmt.members_from: 10.0.0.1/8: host bits set; did you "
        "mean 10.0.0.1/32 or 10.0.0.0/8?" in r.stderr
    )
    assert "Traceback" not in r.stderr


def test_many_problems_are_capped_with_a_count(tmp_path: Path) -> None:
    bad = "".join(f"not-a-network-{i}\n" for i in range(lists.MAX_PROBLEMS + 25))
    repo = make_repo(tmp_path, MGMT_FROM, {"lists/mgmt.txt": bad})
    found = problems(repo)
    assert len(found) == lists.MAX_PROBLEMS + 1
    assert found[0] == (
        "lists/mgmt.txt:0:0: ipsets.mgmt.members_from: 25 more problem(s) in lists/mgmt.txt "
        "not shown"
    )


def test_maxelem_counts_the_merged_members(tmp_path: Path) -> None:
    fleet = """\
    ipsets:
      mgmt:
        type: hash:net
        maxelem: 2
        members: [192.0.2.0/24]
        members_from: lists/mgmt.txt
    """
    repo = make_repo(tmp_path, fleet, {"lists/mgmt.txt": "192.0.2.0/24\n198.51.100.0/24\n"})
    assert problems(repo) == []  # 2 distinct members
    (repo / "lists/mgmt.txt").write_text("192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/24\n")
    (p,) = problems(repo)
    assert p.endswith(
        "ipsets.mgmt.members: 3 members but maxelem is 2; raise maxelem or drop members"
    )


def test_not_utf8_is_one_problem_at_its_line(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, MGMT_FROM, {"lists/mgmt.txt": b"10.0.0.0/8\n\xff\xfe\n"})
    assert problems(repo) == [
        "lists/mgmt.txt:2:1: ipsets.mgmt.members_from: not UTF-8 text (byte 0xff): not read"
    ]


# ------------------------------------------------------------------ outside the repository
def _refused(tmp_path: Path, value: str, setup: dict[str, str] | None = None) -> list[str]:
    """Problems of a set whose ``members_from`` is ``value``; a secret lies outside the
    repository, and nothing of it may be printed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{SECRET}\n")
    fleet = f"ipsets:\n  mgmt:\n    type: hash:net\n    members_from: {value}\n"
    repo = make_repo(tmp_path, fleet, setup or {})
    return problems(repo)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/etc/shadow", "'/etc/shadow' is an absolute path"),
        ("../outside/secret.txt", "'../outside/secret.txt' is not a plain path inside"),
        ("lists/../../outside/secret.txt", "is not a plain path inside the repository"),
        ("./lists/x.txt", "is not a plain path inside the repository"),
        (".git/config", "is not a plain path inside the repository"),
        ("lists//x.txt", "is not a plain path inside the repository"),
        ('"lists/x\\e[31m.txt"', "'lists/x\\x1b[31m.txt' has characters that are not printable"),
    ],
)
def test_paths_that_leave_the_repository_are_refused(
    tmp_path: Path, value: str, message: str
) -> None:
    (p,) = _refused(tmp_path, value)
    assert p.startswith("fleet.yaml:4:19: ipsets.mgmt.members_from: ")
    assert message in p
    assert SECRET not in p and "\x1b" not in p


def test_a_symlink_to_a_host_file_is_refused_unread(tmp_path: Path) -> None:
    repo_lists = tmp_path / "repo" / "lists"
    found = _refused(tmp_path, "lists/link.txt")
    assert found  # the file does not exist yet
    repo_lists.mkdir()
    (repo_lists / "link.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (p,) = problems(tmp_path / "repo")
    assert p == (
        "fleet.yaml:4:19: ipsets.mgmt.members_from: lists/link.txt is a symbolic link: "
        "refused (a list is read from the repository only)"
    )
    # The command line: the repository-wide refusal of links that leave it speaks first.
    (repo_lists / "link.txt").unlink()
    (repo_lists / "passwd").symlink_to("/etc/passwd")
    (tmp_path / "repo" / "fleet.yaml").write_text(
        "ipsets:\n  mgmt:\n    type: hash:net\n    members_from: lists/passwd\n"
    )
    r = reconcile("validate", "--repo", str(tmp_path / "repo"))
    assert r.returncode == 1
    assert "lists/passwd is a symbolic link" in r.stderr and "refused" in r.stderr
    assert "root:" not in r.stdout + r.stderr


def test_a_symlinked_directory_on_the_way_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "lists/secret.txt")
    (tmp_path / "repo" / "lists").symlink_to(tmp_path / "outside")
    (p,) = problems(tmp_path / "repo")
    assert "lists is a symbolic link: refused" in p and SECRET not in p


def test_a_directory_a_fifo_and_a_hard_link_are_refused(tmp_path: Path) -> None:
    (p,) = _refused(tmp_path, "lists", {"lists/a.txt": "10.0.0.0/8\n"})
    assert p.endswith("ipsets.mgmt.members_from: lists is a directory, not a list file")
    os.mkfifo(tmp_path / "repo" / "lists" / "fifo")
    (tmp_path / "repo" / "fleet.yaml").write_text(
        "ipsets:\n  mgmt:\n    type: hash:net\n    members_from: [lists/fifo, lists/hard]\n"
    )
    os.link(tmp_path / "outside" / "secret.txt", tmp_path / "repo" / "lists" / "hard")
    found = problems(tmp_path / "repo")  # returns: the FIFO was never opened
    assert found == [
        "fleet.yaml:4:20: ipsets.mgmt.members_from[0]: lists/fifo is not a regular file: refused",
        "fleet.yaml:4:32: ipsets.mgmt.members_from[1]: lists/hard has 2 hard links: refused "
        "(it could be any file of the host)",
    ]


def test_a_missing_list_and_a_file_on_the_way(tmp_path: Path) -> None:
    (p,) = _refused(tmp_path, "lists/none.txt", {"lists/a.txt": "10.0.0.0/8\n"})
    assert p.endswith("no such file in the repository: lists/none.txt")
    (tmp_path / "repo" / "fleet.yaml").write_text(
        "ipsets:\n  mgmt:\n    type: hash:net\n    members_from: lists/a.txt/b\n"
    )
    (p,) = problems(tmp_path / "repo")
    assert p.endswith("lists/a.txt is not a directory")


def test_schema_shapes(tmp_path: Path) -> None:
    fleet = """\
    ipsets:
      neither: {type: hash:net}
      empty: {type: hash:net, members_from: []}
      number: {type: hash:net, members_from: 5}
      blank: {type: hash:net, members_from: ""}
    """
    found = problems(make_repo(tmp_path, fleet, {}))
    assert found[0] == "fleet.yaml:2:3: ipsets.neither: missing required key 'members'"
    assert [p.split(": ")[1] for p in found[1:]] == [
        "ipsets.empty.members_from",
        "ipsets.number.members_from",
        "ipsets.blank.members_from",
    ]


def test_a_tombstone_checks_its_paths_and_reads_no_list(tmp_path: Path) -> None:
    fleet = """\
    ipsets:
      old: {absent: true, members_from: lists/gone.txt}
      bad: {absent: true, members_from: /etc/shadow}
    """
    found = problems(make_repo(tmp_path, fleet, {}))
    assert len(found) == 1 and "ipsets.bad.members_from: '/etc/shadow' is an absolute" in found[0]


def test_200000_lines_load(tmp_path: Path) -> None:
    body = "".join(
        f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}{'/32' if i % 3 == 0 else ''}\n"
        for i in range(200_000)
    )
    fleet = MGMT_FROM.replace("hash:net\n", "hash:net\n    maxelem: 262144\n")
    repo = make_repo(tmp_path, fleet, {"lists/mgmt.txt": "# big\n" + body})
    host = desired.load_host(repo, "a")
    assert len(host.ipsets["mgmt"].members) == 200_000
    assert "10.3.13.63/32" in host.ipsets["mgmt"].members


def test_problem_sorting_is_by_file_then_line() -> None:
    """List problems sort among the YAML files' like any other (validate prints them so)."""
    a = Problem("fleet.yaml", 4, 19, "ipsets.mgmt.members_from", "x")
    b = Problem("lists/mgmt.txt", 2, 1, "ipsets.mgmt.members_from", "y")
    assert sorted([b, a]) == [a, b]


# ------------------------------------------------------------------------- CI dry-run
class GitRepo:
    """A git repository whose ``desired-state/`` holds MGMT_FROM and host ``a``."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "git"
        self.ds = self.root / "desired-state"
        (self.ds / "hosts").mkdir(parents=True)
        (self.ds / "lists").mkdir()
        git(self.root, "init", "-q")
        self.config = hostcfg.write(tmp_path)
        (self.ds / "fleet.yaml").write_text(MGMT_FROM)
        (self.ds / "hosts" / "a.yaml").write_text("{}\n")

    def commit(self) -> str:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", "lists")
        return git(self.root, "rev-parse", "HEAD")

    def ci_dry_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return reconcile(
            "--dry-run", "--all-hosts", "--repo", str(self.ds), "--log-format", "json", *args,
            env=hostcfg.env_with(self.config, {**GIT_ENV, "RECONCILER_METRICS_FILE": ""}),
        )  # fmt: skip


def test_the_ci_dry_run_plans_a_changed_list(tmp_path: Path) -> None:
    """Only the list changes between the base and the head: fleet.yaml is the same file at
    both revisions, and the plan must still show the members the list adds and drops."""
    repo = GitRepo(tmp_path)
    (repo.ds / "lists" / "mgmt.txt").write_text("# mgmt\n192.0.2.0/24\n198.51.100.0/24\n")
    base = repo.commit()
    (repo.ds / "lists" / "mgmt.txt").write_text("# mgmt\n192.0.2.0/24\n203.0.113.0/24\n")
    repo.commit()
    r = repo.ci_dry_run("--against", base, "--output", "json", "--detailed-exitcode")
    assert r.returncode == 2, r.stderr
    (plan,) = json.loads(r.stdout)["hosts"]
    (change,) = plan["changes"]
    assert change["address"] == "ipset/mgmt"
    assert change["ops"] == [
        {"op": "add_member", "member": "203.0.113.0/24"},
        {"op": "delete_member", "member": "198.51.100.0/24"},
    ]


def test_a_committed_symlink_list_is_refused_by_the_ci_dry_run(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path)
    (repo.ds / "lists" / "mgmt.txt").symlink_to("/etc/passwd")
    repo.commit()
    r = repo.ci_dry_run()
    assert r.returncode == 1
    assert "lists/mgmt.txt is a symbolic link" in r.stderr
    assert "root:" not in r.stdout + r.stderr


# --------------------------------------------------------------------- the real kernel
@pytest.fixture
def host(netns: Netns, tmp_path: Path) -> Host:
    return Host(netns, tmp_path)


@pytest.mark.kernel
def test_apply_a_set_from_a_list_then_a_no_op_dry_run(host: Host) -> None:
    (host.repo / "lists").mkdir()
    (host.repo / "lists" / "mgmt.txt").write_text(
        "# management networks\n192.0.2.0/24\n198.51.100.128/25  # vpn\n\n203.0.113.7\n"
    )
    host.write(
        """\
        ipsets:
          mgmt:
            type: hash:net
            members: [203.0.113.7, 10.1.0.0/16]
            members_from: lists/mgmt.txt
            firewall: {chain: INPUT, in_interface: eth0, target: ACCEPT}
        """
    )
    proc = host.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert host.ns.ipset_members("mgmt") == {
        "192.0.2.0/24",
        "198.51.100.128/25",
        "203.0.113.7",
        "10.1.0.0/16",
    }
    code, plan = host.plan()
    assert code == 0, plan
    assert plan["changes"] == []

    # The list changes alone: the next run follows it.
    (host.repo / "lists" / "mgmt.txt").write_text("192.0.2.0/24\n")
    code, plan = host.plan()
    assert code == 2
    (change,) = plan["changes"]
    assert {op["op"] for op in change["ops"]} == {"delete_member"}
    assert host.apply().returncode == 0
    assert host.ns.ipset_members("mgmt") == {"192.0.2.0/24", "203.0.113.7", "10.1.0.0/16"}


# ------------------------------------------------------------------- the parser's shortcut
@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.tuples(octet, octet, octet, octet, prefix4).map(
                lambda t: ".".join(t[:4]) + ("" if t[4] is None else f"/{t[4]}")
            ),
            st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
            st.ip_addresses(v=6).map(str),
        ),
        max_size=20,
    )
)
def test_a_list_is_its_lines_through_parse_network(items: list[str]) -> None:
    """The loop's inline IPv4 shortcut changes nothing: every line is a member exactly
    when parse_network accepts it as one (valid, not /0, no host bits, not seen before)."""
    items = [i for i in items if i.strip()]  # a blank line is no line
    parsed = lists.parse("".join(f"{item}  # note\n" for item in items).encode())
    want: dict[int, set[str]] = {4: set(), 6: set()}
    bad = 0
    for item in items:
        try:
            version, prefixlen, canon, host = parse_network(item.strip())  # lines are stripped
        except ValueError:
            bad += 1
            continue
        if prefixlen == 0 or host is not None or canon in want[version]:
            bad += 1
        else:
            want[version].add(canon)
    assert parsed.members == {4: frozenset(want[4]), 6: frozenset(want[6])}
    assert len(parsed.problems) == bad


def test_the_parse_cache_is_bounded_by_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lists, "_CACHE", type(lists._CACHE)())
    monkeypatch.setattr(lists, "CACHE_NETWORKS", 250)
    for i in range(4):
        data = "".join(f"10.{i}.{j}.0/24\n" for j in range(100)).encode()
        assert len(lists.parse_cached(data).members[4]) == 100
    assert len(lists._CACHE) == 2  # 200 networks kept, the two oldest lists dropped
    big = "".join(f"10.9.{j >> 8}.{j & 255}\n" for j in range(300)).encode()
    lists.parse_cached(big)
    assert len(lists._CACHE) == 1  # the newest is kept, alone, even over the bound
