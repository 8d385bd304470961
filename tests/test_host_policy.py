"""Nothing from the repository chooses a program to run or a host file outside what the host
allows (issue 12): the host configuration (``--config`` / ``RECONCILER_CONFIG``) decides.

Each refusal goes through the real command line: ``reconcile validate``, the dry-run and the
CI dry-run report it as a validation error (exit 1, nothing applied), and a program the
repository names never runs (it would leave a marker file). The pure checks are tested
directly below.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler import hostconfig
from reconciler.errors import HostConfigError
from reconciler.hostconfig import HostConfig, LibvirtPolicy
from reconciler.kinds.backup.checks import restic_repository_problem
from reconciler.kinds.vm.checks import libvirt_uri_problems
from tests import hostcfg
from tests.clirun import reconcile
from tests.test_gitsource import GIT_ENV, git

FAKE_TARSNAP = Path(__file__).resolve().parents[1] / "lab" / "fake_tarsnap" / "tarsnap"
SECRET = "TOP-SECRET-LINE-d41d8cd98f00"


class Site:
    """A desired-state git checkout with a hostile script in it, a host configuration and
    private state: what CI or a host sees."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        (self.repo / "hosts").mkdir(parents=True)
        self.marker = root / "MARKER"
        self.script = self.repo / "bin" / "evil"
        self.script.parent.mkdir()
        self.script.write_text(f"#!/bin/sh\ntouch {self.marker}\nexit 0\n")
        self.script.chmod(0o755)
        self.keys = root / "keys"  # a directory the host allows, outside the repository
        self.keys.mkdir()
        git(self.repo, "init", "-q")

    def write(self, files: dict[str, str]) -> None:
        """Write ``files`` (relative to the repository) and commit everything (with
        ``hosts/h1.yaml``, the host every test runs as: ``{}`` unless ``files`` has it)."""
        if not (self.repo / "hosts" / "h1.yaml").exists():
            files = {"hosts/h1.yaml": "{}\n", **files}
        for rel, text in files.items():
            (self.repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.repo / rel).write_text(text)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "change")

    def config(self, **settings: Any) -> Path:
        """Write a host configuration (outside the repository) and return its path."""
        return hostcfg.write(self.root / "etc", **settings)

    def run(
        self, *args: str, config: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real CLI, metrics off, ``config`` as the host's configuration (None: none,
        the defaults) and ``env`` added to the environment."""
        env = {**GIT_ENV, "RECONCILER_METRICS_FILE": "", **(env or {})}
        env.pop(hostconfig.ENV_VAR, None)
        if config is not None:
            env[hostconfig.ENV_VAR] = str(config)
        return reconcile(*args, env=env)

    def validate(self, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("validate", "--repo", str(self.repo), config=config)

    def dry_run(
        self, host: str, only: str, config: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "--dry-run", "--repo", str(self.repo), "--host", host, "--only", only,
            "--state-dir", str(self.root / "state"), "--lock-file", str(self.root / "lock"),
            "--log-format", "json", config=config, env=env,
        )  # fmt: skip

    def ci_dry_run(self, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(
            "--dry-run", "--all-hosts", "--repo", str(self.repo), "--against", "HEAD",
            "--log-format", "json", config=config,
        )  # fmt: skip

    def every_way(self, host: str, only: str, config: Path | None = None) -> list[str]:
        """validate, the dry-run and the CI dry-run, each refused (exit 1, no traceback,
        "nothing was applied"); returns their stderr."""
        out = []
        for proc in (self.validate(config), self.dry_run(host, only, config),
                     self.ci_dry_run(config)):  # fmt: skip
            assert proc.returncode == 1, (proc.args, proc.stdout, proc.stderr)
            assert "Traceback" not in proc.stderr
            assert "nothing was applied" in proc.stderr
            out.append(proc.stderr)
        return out


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def _tarsnap_host(keys: Path, command: str | None = None) -> str:
    cmd = f"  command: {command}\n" if command is not None else ""
    return (
        f"tarsnap:\n{cmd}  keyfile: {keys}/tarsnap.key\n  cachedir: {keys}/cache\n"
        "backups:\n  etc:\n    backend: tarsnap\n    paths: [/etc]\n    every: 1d\n"
        "    keep: {last: 2}\n"
    )


# ------------------------------------------------------------------ commands: the host's only
def test_a_tarsnap_command_in_the_repository_is_refused_and_never_runs(site: Site) -> None:
    site.write({"hosts/h1.yaml": _tarsnap_host(site.keys, str(site.script))})
    config = site.config(tarsnap="/usr/local/bin/tarsnap", allowed_dirs=[site.keys])
    for stderr in site.every_way("h1", "backup", config):
        assert (
            f"hosts/h1.yaml:2:12: tarsnap.command: {site.script} is not the host's tarsnap "
            f"command (/usr/local/bin/tarsnap, set in {config} commands.tarsnap); remove it "
            "from the repository"
        ) in stderr
    # Without a host configuration: refused against the default command as well.
    for stderr in site.every_way("h1", "backup", None):
        assert f"{site.script} is not the host's tarsnap command (tarsnap, the default" in stderr
    assert not site.marker.exists()


def test_the_command_run_is_the_hosts_even_when_the_repository_repeats_it(site: Site) -> None:
    """The repository may write the host's own command; the program run is the host's
    (the tarsnap emulator here, which logs its calls)."""
    calls = site.root / "calls.jsonl"
    (site.keys / "tarsnap.key").write_text("key\n")
    (site.keys / "tarsnap.key").chmod(0o600)
    (site.keys / "cache").mkdir()
    (site.keys / "cache" / "directory").touch()
    site.write({"hosts/h1.yaml": _tarsnap_host(site.keys, str(FAKE_TARSNAP))})
    config = site.config(tarsnap=str(FAKE_TARSNAP), allowed_dirs=[site.keys])
    assert site.validate(config).returncode == 0
    env = {"FAKE_TARSNAP_STATE": str(site.root / "server"), "FAKE_TARSNAP_CALLLOG": str(calls)}
    proc = site.dry_run("h1", "backup", config, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "+ archive etc-" in proc.stdout
    assert calls.exists()  # the host's tarsnap listed the archives
    assert not site.marker.exists()


# ------------------------------------------------------------------ libvirt node URIs
def _vms(uri: str) -> str:
    return (
        f"controller: h1\nstorage: shared\nnodes:\n  kvm1: {{uri: '{uri}'}}\n"
        "vms:\n  web: {node: kvm1}\n"
    )


def test_an_ext_transport_uri_is_refused_and_its_command_never_runs(site: Site) -> None:
    uri = f"qemu+ext:///system?command={site.script}"
    site.write({"vms.yaml": _vms(uri)})
    for stderr in site.every_way("h1", "vm", site.config()):
        assert f"vms.yaml:4:15: nodes.kvm1.uri: {uri}: the ext transport runs a command" in stderr
        assert "the parameter command= names a program to run" in stderr
    assert not site.marker.exists()


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+ssh://kvm1/system?command={script}",
        "qemu+ssh://kvm1/system?netcat={script}",
        "qemu+libssh2://kvm1/system?proxy=netcat",
        "qemu+ssh://-oProxyCommand={script}/system",
        "qemu+ssh://kvm1/system?Com%6Dand={script}",
    ],
)
def test_ssh_uris_that_choose_a_program_are_refused(site: Site, uri: str) -> None:
    site.write({"vms.yaml": _vms(uri.format(script=site.script))})
    proc = site.validate(site.config())
    assert proc.returncode == 1 and "nodes.kvm1.uri" in proc.stderr, proc.stderr
    assert not site.marker.exists()


def test_the_test_driver_needs_allow_test_driver(site: Site) -> None:
    site.write({"vms.yaml": _vms("test:///default")})
    for stderr in site.every_way("h1", "vm", site.config()):
        assert "libvirt's test driver is not allowed on this host" in stderr
        assert "libvirt.allow_test_driver is false" in stderr
    assert site.validate(site.config(allow_test_driver=True)).returncode == 0


def test_a_test_uri_never_echoes_the_file_it_names(site: Site) -> None:
    outside = site.root / "shadow"
    outside.write_text(f"{SECRET}\nsecond line\n")
    site.write({"vms.yaml": _vms(f"test://{outside}")})
    config = site.config(allow_test_driver=True, allowed_dirs=[site.keys])
    for stderr in site.every_way("h1", "vm", config):
        assert f"the test driver would read a host file: {outside} is outside" in stderr
        assert SECRET not in stderr
    # Allowed, but not a node file: libvirt's parse error quotes the file; we do not.
    inside = site.keys / "node.xml"
    inside.write_text(f"{SECRET}\nsecond line\n")
    site.write({"vms.yaml": _vms(f"test://{inside}")})
    proc = site.dry_run("h1", "vm", config)
    assert proc.returncode == 1
    assert "is unreachable" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_the_labs_socket_uri_is_valid_by_default(site: Site) -> None:
    site.write(
        {
            "vms.yaml": _vms(
                "qemu:///system?socket=/run/reconciler-lab/kvm1/run/libvirt/libvirt-sock"
            )
        }
    )
    proc = site.validate()
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ host files: allowed_dirs
def test_key_and_password_files_outside_allowed_dirs_are_refused(site: Site) -> None:
    site.write(
        {
            "fleet.yaml": "tarsnap: {keyfile: /root/.ssh/id_rsa, cachedir: /var/lib/reconciler}\n",
            "hosts/h1.yaml": (
                "backups:\n  etc:\n    backend: restic\n    repository: /var/lib/reconciler/r\n"
                "    password_file: /etc/shadow\n    paths: [/etc]\n    every: 1d\n"
                "    keep: {last: 2}\n"
            ),
        }
    )
    config = site.config(allowed_dirs=["/etc/reconciler", "/var/lib/reconciler"])
    for stderr in site.every_way("h1", "backup", config):
        assert (
            "fleet.yaml:1:20: tarsnap.keyfile: /root/.ssh/id_rsa is outside the directories "
            f"the host allows: allowed_dirs is /etc/reconciler, /var/lib/reconciler (set in "
            f"{config} allowed_dirs)"
        ) in stderr
        assert "hosts/h1.yaml:5:20: backups.etc.password_file: /etc/shadow is outside" in stderr
        assert "tarsnap.cachedir" not in stderr and "backups.etc.repository" not in stderr


def test_a_symlink_out_of_an_allowed_dir_is_refused(site: Site) -> None:
    (site.keys / "restic.pass").symlink_to("/etc/shadow")
    site.write(
        {
            "hosts/h1.yaml": (
                f"backups:\n  etc:\n    backend: restic\n    repository: {site.keys}/repo\n"
                f"    password_file: {site.keys}/restic.pass\n    paths: [/etc]\n"
                "    every: 1d\n    keep: {last: 2}\n"
            ),
        }
    )
    proc = site.validate(site.config(allowed_dirs=[site.keys]))
    assert proc.returncode == 1
    assert (
        f"backups.etc.password_file: {site.keys}/restic.pass resolves to /etc/shadow, outside "
        "the directories the host allows (a symbolic link leaves them)"
    ) in proc.stderr


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        ("rclone:remote:bucket", "restic's rclone backend starts the program rclone"),
        (
            "sftp:-oProxyCommand=/tmp/x:/srv/r",
            "the sftp host -oProxyCommand=/tmp/x starts with '-'",
        ),
        ("/srv/restic", "a local restic repository: /srv/restic is outside"),
        ("local:/var/lib/reconciler/../../srv", "is outside the directories the host allows"),
        ("restic-repo", "is a relative path"),
        ("ftp:host/path", "ftp: is not a restic backend the host allows"),
    ],
)
def test_restic_repositories_that_start_programs_or_leave_allowed_dirs(
    site: Site, repository: str, message: str
) -> None:
    site.write(
        {
            "hosts/h1.yaml": (
                f"backups:\n  etc:\n    backend: restic\n    repository: '{repository}'\n"
                "    password_file: /etc/reconciler/restic.pass\n    paths: [/etc]\n"
                "    every: 1d\n    keep: {last: 2}\n"
            ),
        }
    )
    proc = site.validate()
    assert proc.returncode == 1
    assert "hosts/h1.yaml:4:17: backups.etc.repository: " in proc.stderr, proc.stderr
    assert message in proc.stderr


def test_an_allowed_configuration_passes(site: Site) -> None:
    site.write(
        {
            "fleet.yaml": f"tarsnap: {{keyfile: {site.keys}/key, cachedir: {site.keys}/c}}\n",
            "hosts/h1.yaml": (
                "backups:\n  etc:\n    backend: restic\n    repository: 's3:s3.amazonaws.com/b'\n"
                f"    password_file: {site.keys}/restic.pass\n    paths: [/etc]\n"
                "    every: 1d\n    keep: {last: 2}\n"
            ),
            "vms.yaml": _vms("qemu+ssh://root@kvm1/system?keyfile=/etc/reconciler/id&no_tty=1"),
        }
    )
    proc = site.validate(site.config(allowed_dirs=["/etc/reconciler", site.keys]))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


# ------------------------------------------------------------------ the configuration itself
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "commands: {tarsnap: bin/tarsnap}\n",
            ":1:21: commands.tarsnap: expected an absolute path",
        ),
        ("commands: {rclone: /usr/bin/rclone}\n", ":1:12: commands.rclone: unknown key 'rclone'"),
        ("allowed_dirs: /etc\n", ":1:15: allowed_dirs: expected a list of directories"),
        ("allowed_dirs: [etc]\n", ":1:16: allowed_dirs[0]: expected an absolute directory path"),
        ("libvirt: {allow_test_driver: 1}\n", ":1:30: libvirt.allow_test_driver: expected true"),
        ("colour: blue\n", ":1:1: colour: unknown key 'colour'"),
        ("commands: [\n", ": YAML syntax error"),
    ],
)
def test_a_bad_configuration_is_a_clear_error(site: Site, text: str, expected: str) -> None:
    site.write({"fleet.yaml": "{}\n"})
    config = site.root / "config.yaml"
    config.write_text(text)
    for proc in (site.validate(config), site.dry_run("h1", "backup", config),
                 site.ci_dry_run(config)):  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"{config}:" in proc.stderr and expected in proc.stderr, proc.stderr
        assert f"{config}{expected}" in proc.stderr or "syntax" in expected
    # Named on the command line as well.
    proc = site.run("validate", "--repo", str(site.repo), "--config", str(config))
    assert proc.returncode == 1 and str(config) in proc.stderr


def test_a_missing_explicit_configuration_is_an_error(site: Site) -> None:
    site.write({"fleet.yaml": "{}\n"})
    missing = site.root / "nope.yaml"
    snapshot = site.run(
        "snapshot", "--repo", str(site.repo), "--host", "h1", "--only", "backup",
        "--state-dir", str(site.root / "state"), "--lock-file", str(site.root / "lock"),
        "-o", str(site.root / "h1.json"), "--config", str(missing),
    )  # fmt: skip
    for proc in (site.validate(missing), site.dry_run("h1", "backup", missing), snapshot):
        assert proc.returncode == 1
        assert f"host configuration {missing} does not exist" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (site.root / "h1.json").exists()


def test_a_configuration_others_can_write_is_refused(site: Site) -> None:
    site.write({"fleet.yaml": "{}\n"})
    config = site.config()
    config.chmod(0o666)
    proc = site.validate(config)
    assert proc.returncode == 1
    assert "writable by group or others (mode 0666): chmod go-w" in proc.stderr


# ------------------------------------------------------------------ the pure checks
def test_defaults() -> None:
    h = HostConfig()
    assert (h.commands.tarsnap, h.commands.restic) == ("tarsnap", "restic")
    assert h.allowed_dirs == ("/etc/reconciler", "/var/lib/reconciler")
    assert h.libvirt.allow_test_driver is False
    assert hostconfig.load(None) == h or Path(hostconfig.DEFAULT_PATH).exists()


def test_load_reads_every_setting(tmp_path: Path) -> None:
    path = hostcfg.write(
        tmp_path, tarsnap="/usr/local/bin/tarsnap", restic="/usr/bin/restic",
        allowed_dirs=["/etc/reconciler/", "/srv/backup"], allow_test_driver=True,
    )  # fmt: skip
    h = hostconfig.load(path)
    assert h.commands.tarsnap == "/usr/local/bin/tarsnap"
    assert h.commands.restic == "/usr/bin/restic"
    assert h.allowed_dirs == ("/etc/reconciler", "/srv/backup")
    assert h.libvirt == LibvirtPolicy(allow_test_driver=True)
    assert h.origin("commands.tarsnap") == f"set in {path} commands.tarsnap"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert hostconfig.load(empty).commands == HostConfig().commands
    with pytest.raises(HostConfigError, match="does not exist"):
        hostconfig.load(tmp_path / "missing.yaml")


def test_allowed_dirs_compare_whole_path_components(tmp_path: Path) -> None:
    h = HostConfig(allowed_dirs=("/var/lib/reconciler",))
    assert h.path_problem("/var/lib/reconciler/x") is None
    assert h.path_problem("/var/lib/reconciler") is None
    assert h.path_problem("/var/lib/reconciler-lab/x") is not None
    assert h.path_problem("/var/lib/reconciler/../../../etc/shadow") is not None
    assert h.path_problem("relative/x") is not None
    assert h.path_problem("/var/lib/reconciler/\0x") is not None  # no ValueError
    assert h.path_problem("/run/x", also=("/run",)) is None
    # An allowed directory that is itself a symlink: its target counts as inside.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert HostConfig(allowed_dirs=(str(tmp_path / "link"),)).path_problem(str(real / "k")) is None


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("qemu:///system", True),
        ("qemu:///system?socket=/run/libvirt/libvirt-sock", True),
        ("qemu:///system?socket=/var/run/libvirt/libvirt-sock", True),
        ("qemu+unix:///system?socket=/tmp/sock", False),
        ("qemu+ssh://root@kvm1/system", True),
        ("qemu+ssh://root@kvm1/system?keyfile=/etc/reconciler/id&no_tty=1&mode=legacy", True),
        ("qemu+ssh://root@kvm1/system?keyfile=/root/.ssh/id_rsa", False),
        ("qemu+libssh://kvm1/system?known_hosts=/etc/reconciler/kh&known_hosts_verify=auto", True),
        ("qemu+tls://kvm1/system?pkipath=/etc/reconciler/pki&tls_priority=NORMAL", True),
        ("qemu+tcp://kvm1/system", True),
        ("kvm1", True),  # a uri_aliases name of the host's libvirt.conf
        ("qemu+ext:///system?command=/bin/true", False),
        ("qemu+ext:///system", False),
        ("qemu+ssh://kvm1/system?netcat=/bin/nc", False),
        ("qemu+ssh://kvm1/system?proxy=native", False),
        ("qemu+unix:///system?name=test:///etc/shadow", False),
        ("qemu:///embed?root=/tmp/x", False),
        ("qemu:///system?foo=bar", False),
        ("qemu:///system?a=1;command=/bin/true", False),
        ("qemu+ssh://%2DoProxyCommand=x@kvm1/system", False),
        ("test:///default", False),
        ("test+tcp://kvm1/default", False),
        ("qemu:///system#x", False),
        ("qemu:///system?socket=/run/x\nsecond", False),
    ],
)
def test_libvirt_uris(uri: str, allowed: bool) -> None:
    assert (libvirt_uri_problems(uri, HostConfig()) == []) is allowed


def test_libvirt_test_driver_when_allowed() -> None:
    h = HostConfig(libvirt=LibvirtPolicy(allow_test_driver=True))
    assert libvirt_uri_problems("test:///default", h) == []
    assert libvirt_uri_problems("test:///var/lib/reconciler/node.xml", h) == []
    assert libvirt_uri_problems("test:///var/lib/reconciler/%2e%2e/%2e%2e/%2e%2e/etc/shadow", h)


@pytest.mark.parametrize(
    ("repository", "allowed"),
    [
        ("/var/lib/reconciler/restic", True),
        ("local:/var/lib/reconciler/restic", True),
        ("rest:https://user:pass@backup.example.org:8000/www/", True),
        ("s3:s3.amazonaws.com/bucket", True),
        ("b2:bucket:path", True),
        ("azure:container:/", True),
        ("gs:bucket:/", True),
        ("swift:container:/path", True),
        ("sftp:backup@host:/srv/restic", True),
        ("sftp://backup@host:2222//srv/restic", True),
        ("sftp:-oProxyCommand=x:/srv", False),
        ("sftp://%2Do@host//srv", False),
        ("sftp:host:/srv -o sftp.command=x", False),
        ("rest:http://h/?rclone.program=x", False),
        ("rclone:remote:path", False),
        ("/var/lib/reconciler-lab/restic", False),
        ("local:relative", False),
        ("relative", False),
        ("ftp:host", False),
    ],
)
def test_restic_repositories(repository: str, allowed: bool) -> None:
    assert (restic_repository_problem(repository, HostConfig()) is None) is allowed


def test_a_config_file_must_be_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(HostConfigError, match="not a regular file"):
        hostconfig.load(tmp_path)
    path = hostcfg.write(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert hostconfig.load(path).file == str(path)
