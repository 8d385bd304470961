"""Command-line conventions (issue 13), through the real CLI: ``--version``, usage errors exit
1 with the usage line, every subcommand in ``--help``, "needs root" for a run by another
user, colour on a terminal only, ``+dirty`` in the header, and a CI dry-run that claims
nothing it did not read and counts its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from reconciler import __version__
from tests.clirun import ROOT, reconcile
from tests.test_ci_dryrun import Repo
from tests.test_gitsource import GIT_ENV, git

ENV = {**GIT_ENV, "RECONCILER_METRICS_FILE": ""}


def on_a_terminal(argv: Sequence[str], env: dict[str, str]) -> str:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal; what it wrote."""
    master, slave = os.openpty()
    proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode().replace("\r\n", "\n")


# ------------------------------------------------------------------ --version, usage
def test_version_prints_the_version_and_imports_no_provider() -> None:
    proc = reconcile("--version")
    assert proc.returncode == 0 and proc.stdout == f"reconcile {__version__}\n"
    code = (
        "import sys\nfrom reconciler.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith('reconciler.kinds.')"
        " and m.rsplit('.', 1)[1] in ('provider', 'netlink', 'ethtool', 'libvirtio')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["--dry-run", "--only", "ipset,firewall"],
        ["--output", "yaml"],
        ["--all-hosts"],
        ["--out", "plan.json"],
        ["--plan", "plan.json", "--dry-run"],
        ["--plan", "plan.json", "--target", "ipset/mgmt"],
        ["--plan", "plan.json", "--only", "ipset"],
        ["--dry-run", "--target", "mgmt"],
        ["--dry-run", "--target", "firewall/x"],
        ["--dry-run", "--only", "nic", "--target", "ipset/mgmt"],
        ["--dry-run", "--all-hosts", "--target", "ipset/mgmt"],
        ["validate", "--bogus"],
        ["snapshot", "--only", "firewall"],
        ["status", "--last", "0"],
    ],
)
def test_usage_errors_exit_1_with_the_usage_line(argv: list[str]) -> None:
    proc = reconcile(*argv)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("usage: reconcile"), proc.stderr
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_help_names_every_subcommand() -> None:
    proc = reconcile("--help")
    assert proc.returncode == 0
    usage = proc.stdout.split("\n\n", 1)[0]
    for line in (
        "reconcile validate",
        "reconcile snapshot",
        "reconcile status",
        "reconcile import",
        "reconcile --dry-run --all-hosts",
        "reconcile --plan FILE",
        "--out FILE",
        "reconcile --version",
    ):
        assert line in usage, line
    for option in ("--target ADDRESS", "--out FILE", "--plan FILE", "--allow-empty", "--version"):
        assert option in proc.stdout, option
    for sub in ("validate", "snapshot", "status"):
        assert reconcile(sub, "--help").returncode == 0
    assert "--host NAME" in reconcile("validate", "--help").stdout


# ------------------------------------------------------------------ not root
@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that ``nobody`` can read (pytest's tmp_path is root's)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    d = Path(tempfile.mkdtemp(prefix="reconcile-nobody-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "RECONCILER_METRICS_FILE": "",
    }
    return subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
         sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, cwd=cwd, env=env, check=False,
    )  # fmt: skip


def _world_readable(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)


def test_a_run_that_needs_root_says_so(shared_dir: Path) -> None:
    repo = shared_dir / "repo"
    (repo / "hosts").mkdir(parents=True)
    (repo / "fleet.yaml").write_text("ipsets:\n  mgmt: {type: hash:net, members: [192.0.2.0/24]}\n")
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    _world_readable(repo)
    base = ["--repo", str(repo), "--host", "h1"]
    own = ["--state-dir", str(shared_dir / "s"), "--lock-file", str(shared_dir / "l")]
    for args in (
        base,  # the defaults: /var/lib/reconciler, /run/reconciler.lock, every kind
        ["--dry-run", *base],
        ["--dry-run", *base, "--only", "nic", *own],
        ["--dry-run", *base, "--only", "backup"],  # the default state dir is root's
        ["snapshot", *base, "-o", str(shared_dir / "h1.json")],
    ):
        proc = as_nobody(*args, cwd=shared_dir)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "needs root (it reads and changes" in proc.stderr, (args, proc.stderr)
        assert proc.stderr.rstrip().endswith("run it with sudo"), proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""
    assert not (shared_dir / "s").exists() and not (shared_dir / "h1.json").exists()
    proc = as_nobody("--dry-run", *base, cwd=shared_dir)
    assert "ipset, nic state in the kernel" in proc.stderr
    assert "/var/lib/reconciler" in proc.stderr or os.access("/var/lib", os.W_OK)


def test_what_needs_no_root_works_unprivileged(shared_dir: Path) -> None:
    repo = Repo(shared_dir / "ci")
    base = repo.write()
    repo.write(members="192.0.2.0/24, 203.0.113.0/24")
    (repo.ds / "hosts" / "nobody.yaml").write_text("{}\n")  # uncommitted
    _world_readable(shared_dir)
    repo.config.chmod(0o644)
    for dirpath, dirnames, filenames in os.walk(repo.root):  # the CI runner's checkout
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, 65534, 65534)
    assert as_nobody("--version", cwd=shared_dir).stdout == f"reconcile {__version__}\n"
    assert as_nobody("--help", cwd=shared_dir).returncode == 0
    proc = as_nobody("validate", "--repo", str(repo.ds), "--config", str(repo.config),
                     cwd=shared_dir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = as_nobody(
        "--dry-run", "--all-hosts", "--repo", str(repo.ds), "--against", base,
        "--config", str(repo.config), "--log-format", "json", cwd=shared_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "+ member 203.0.113.0/24" in proc.stdout
    # A host run of kinds that need no root, with state this user owns.
    state = shared_dir / "mine"
    state.mkdir()
    os.chown(state, 65534, 65534)
    proc = as_nobody(
        "--repo", str(repo.ds), "--host", "nobody", "--only", "backup", "--config",
        str(repo.config), "--state-dir", str(state / "state"), "--lock-file",
        str(state / "lock"), "--allow-dirty", "--log-format", "json", cwd=shared_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # status on a state dir this user can read (its own), and on root's: needs root.
    proc = as_nobody("status", "--state-dir", str(state / "state"), cwd=shared_dir)
    assert proc.returncode == 0, proc.stderr
    roots = shared_dir / "roots"
    roots.mkdir(mode=0o755)
    proc = as_nobody("status", "--state-dir", str(roots), cwd=shared_dir)
    assert proc.returncode == 1
    assert "needs root" in proc.stderr and "sudo" in proc.stderr and "chown" not in proc.stderr


# ------------------------------------------------------------------ colour
def test_colour_on_a_terminal_only_and_never_with_no_color(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.write()
    repo.write(members="192.0.2.0/24, 203.0.113.0/24")
    argv = [sys.executable, "-m", "reconciler", "--dry-run", "--all-hosts", "--repo",
            str(repo.ds), "--against", base, "--config", str(repo.config)]  # fmt: skip
    env = {k: v for k, v in ENV.items() if k != "NO_COLOR"}
    coloured = on_a_terminal(argv, env)
    assert "\x1b[32m+ member 203.0.113.0/24\x1b[0m" in coloured
    assert "\x1b[31m- member 198.51.100.0/24\x1b[0m" in coloured
    assert "\x1b[1mPlan for host a" in coloured and "\x1b[1m=== host a" in coloured
    plain = on_a_terminal(argv, {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in plain and "+ member 203.0.113.0/24" in plain
    piped = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert "\x1b[" not in piped.stdout and "+ member 203.0.113.0/24" in piped.stdout
    # NO_COLOR set but empty does not count (no-color.org).
    assert "\x1b[32m" in on_a_terminal(argv, {**env, "NO_COLOR": ""})


# ------------------------------------------------------------------ headers, CI text
def test_the_header_keeps_dirty(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "hosts").mkdir(parents=True)
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    (repo / "fleet.yaml").write_text("{}\n")  # uncommitted
    proc = reconcile(
        "--dry-run", "--repo", str(repo), "--host", "h1", "--only", "backup", "--state-dir",
        str(tmp_path / "s"), "--lock-file", str(tmp_path / "l"), env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Plan for host h1 at commit {head[:12]}+dirty (dry run):")


def test_the_ci_dry_run_claims_no_live_state_and_counts_errors(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.write()
    # A commit that asks nothing of any host (a shared file changed: every host is planned),
    # and no host was read.
    (repo.ds / "README").write_text("docs only\n")
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "docs")
    r = repo.plan("--against", "HEAD~1", "--config", str(repo.config))
    assert r.returncode == 0, r.stderr
    assert "live state matches" not in r.stdout
    assert r.stdout.count("No changes against HEAD~1") == 3
    assert r.stdout.rstrip().endswith("0 change(s) on 0 host(s), 0 error(s)")
    # Against the head itself nothing changed: every host unchanged, not planned.
    r = repo.plan("--against", "HEAD", "--config", str(repo.config))
    assert r.returncode == 0, r.stderr
    assert "live state" not in r.stdout
    assert r.stdout.count("unchanged since HEAD (not planned)") == 3
    assert r.stdout.rstrip().endswith("0 error(s); 3 host(s) unchanged since HEAD")
    # Errors are counted: a host with nothing to compare with.
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    r = repo.plan("--snapshots", str(snaps), "--config", str(repo.config))
    assert r.returncode == 1
    assert r.stdout.rstrip().endswith("0 change(s) on 0 host(s), 3 error(s) on 3 host(s)")
    r = repo.plan("--snapshots", str(snaps), "--config", str(repo.config), "--output", "json")
    summary = json.loads(r.stdout)["summary"]
    assert summary == {"hosts": 3, "changes": 0, "errors": 3, "unchanged": 0}
