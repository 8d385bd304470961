"""``reconcile import`` through the real command line, without kernel objects: printed YAML
our own loader accepts, the merge into ``-o DIR`` that touches nothing already there, and
bad input (a malformed file names its file and line, exit 1, nothing written; never a
traceback). Round trips on real objects are in tests/kinds/<kind>/test_importer.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests import importrun

SAVE = """\
create mgmt hash:net family inet hashsize 1024 maxelem 65536
add mgmt 192.0.2.0/24
add mgmt 203.0.113.7
create bans hash:ip family inet hashsize 1024 maxelem 65536 timeout 300
"""
SCRIPT = "#!/bin/sh\nethtool -G eth1 rx 4096 tx 4096\nethtool -K eth1 gso off\necho done\n"


def _files(tmp_path: Path) -> tuple[Path, Path]:
    save, script = tmp_path / "ipset.rules", tmp_path / "ifup-local"
    save.write_text(SAVE)
    script.write_text(SCRIPT)
    return save, script


def test_printed_yaml_is_valid_and_says_where_values_came_from(tmp_path: Path) -> None:
    save, script = _files(tmp_path)
    proc = importrun.run(
        "import", "--host", "h1", "--ipset-save", str(save), "--ifup-local", str(script),
        "--only", "ipset,nic",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["ipsets"] == {"mgmt": {"type": "hash:net",
                                      "members": ["192.0.2.0/24", "203.0.113.7/32"]}}  # fmt: skip
    assert doc["nics"] == {"eth1": {"rings": {"rx": 4096, "tx": 4096}, "offloads": {"gso": False}}}
    assert f"# from {save}:lines 1-3" in proc.stdout
    assert (
        f"# rings from {script}:2" in proc.stdout and f"# offloads from {script}:3" in proc.stdout
    )
    assert "# not imported: ipset/bans: type hash:ip" in proc.stdout
    assert "not imported: ipset/bans" in proc.stderr
    assert f"note: {script}: 1 line(s) without ethtool ignored: 4" in proc.stderr
    # Our own loader accepts it as a host file.
    repo = importrun.new_repo(tmp_path)
    (repo / "hosts").mkdir()
    (repo / "hosts" / "h1.yaml").write_text(proc.stdout)
    assert importrun.validate(repo).returncode == 0


def test_merge_adds_only_what_is_missing(tmp_path: Path) -> None:
    save, script = _files(tmp_path)
    repo = importrun.new_repo(tmp_path)
    (repo / "hosts").mkdir()
    host = repo / "hosts" / "h1.yaml"
    host.write_text("nics: {}  # none yet\n# the fleet's sets\n\nipsets:\n  mgmt:\n"
                    "    type: hash:net\n    members: [192.0.2.0/24]\n")  # fmt: skip
    before = host.read_text()
    proc = importrun.import_to(
        repo, "--ipset-save", str(save), "--ifup-local", str(script), "--only", "ipset,nic"
    )
    assert proc.returncode == 0, proc.stderr
    assert "not imported: ipset/mgmt: already in hosts/h1.yaml; left as it is" in proc.stderr
    assert "added 1 resource(s): nic/eth1" in proc.stderr
    data = yaml.safe_load(host.read_text())
    assert data["ipsets"]["mgmt"]["members"] == ["192.0.2.0/24"]  # untouched
    assert data["nics"]["eth1"]["rings"] == {"rx": 4096, "tx": 4096}
    kept = [ln for ln in before.splitlines() if not ln.startswith("nics:")]
    assert all(ln in host.read_text().splitlines() for ln in kept)
    assert importrun.validate(repo).returncode == 0


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("ipset.rules", "create a hash:net\nadd a 10.0.0.1/33\n",
         "ipset.rules:2:1: add a: not a network"),
        ("ipset.rules", b"\xff\xfe\x00binary", "not UTF-8 text"),
        ("ipset.rules", None, "cannot read it"),
        ("ifup-local", "ethtool -G eth1 rx huge\n",
         "ifup-local:1:1: ethtool -G eth1 rx: not a ring size"),
    ],
)  # fmt: skip
def test_bad_input_files_write_nothing(
    tmp_path: Path, name: str, content: str | bytes | None, expected: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    repo = importrun.new_repo(tmp_path)
    option = "--ipset-save" if name == "ipset.rules" else "--ifup-local"
    proc = importrun.import_to(repo, option, str(path), "--only", "ipset,nic")
    assert proc.returncode == 1
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["fleet.yaml"]  # nothing written


def test_a_section_in_flow_style_is_not_merged_into(tmp_path: Path) -> None:
    save, _ = _files(tmp_path)
    repo = importrun.new_repo(tmp_path)
    (repo / "hosts").mkdir()
    host = repo / "hosts" / "h1.yaml"
    host.write_text("ipsets: {other: {type: hash:net, members: []}}\n")
    proc = importrun.import_to(repo, "--ipset-save", str(save), "--only", "ipset")
    assert proc.returncode == 1
    assert "hosts/h1.yaml: cannot add to ipsets: it is written in flow style" in proc.stderr
    assert host.read_text() == "ipsets: {other: {type: hash:net, members: []}}\n"


def test_usage_errors(tmp_path: Path) -> None:
    bad_host = importrun.run("import", "--host", "no/such", "--only", "nic")
    assert bad_host.returncode == 1 and "invalid host name" in bad_host.stderr
    bad_kind = importrun.run("import", "--only", "dns")
    assert bad_kind.returncode == 1 and "unknown kind dns" in bad_kind.stderr
    restic = importrun.run(
        "import", "--host", "h1", "--restic", str(tmp_path / "r"), "--only", "backup"
    )
    assert restic.returncode == 1 and "--restic needs --restic-password-file" in restic.stderr
    usage = importrun.run("import", "--help")
    for option in ("--ipset-save", "--ifup-local", "--nic", "--node", "--tarsnap", "--restic",
                   "--out-dir"):  # fmt: skip
        assert option in usage.stdout


def test_symlinks_in_the_output_directory_are_refused(tmp_path: Path) -> None:
    save, _ = _files(tmp_path)
    repo = importrun.new_repo(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / "hosts").symlink_to(elsewhere)
    proc = importrun.import_to(repo, "--ipset-save", str(save), "--only", "ipset")
    assert proc.returncode == 1
    assert "a symlink; import writes only regular files" in proc.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_device_as_input_file_is_refused(tmp_path: Path) -> None:
    repo = importrun.new_repo(tmp_path)
    proc = importrun.import_to(repo, "--ipset-save", "/dev/zero", "--only", "ipset")
    assert proc.returncode == 1
    assert "/dev/zero: not a regular file" in proc.stderr and "Traceback" not in proc.stderr


def test_nothing_found_prints_an_empty_host_file(tmp_path: Path) -> None:
    proc = importrun.run("import", "--host", "h1", "--only", "nic")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == {}  # a valid empty host file, not an empty document
