"""Inputs that used to end in a traceback (issue 12): each is now a clear message, exit 1,
nothing applied. Real CLI; anything touching the kernel runs in a throw-away namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.clirun import ROOT, reconcile
from tests.netns import Netns, netns  # noqa: F401  (fixture)
from tests.test_gitsource import GIT_ENV, fleet

A = ["192.0.2.0/24"]


def _cli(ns: Netns, tmp: Path, *extra: str, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    env = {**GIT_ENV, "RECONCILER_METRICS_FILE": "", "PYTHONPATH": str(ROOT)}
    r = ns.run(
        [*prefix, sys.executable, "-m", "reconciler", "--repo", str(tmp / "repo"),
         "--host", "h1", "--only", "ipset", "--state-dir", str(tmp / "state"),
         "--lock-file", str(tmp / "lock"), *extra],
        check=False, env=env,
    )  # fmt: skip
    return r.returncode, r.stdout + r.stderr


def _repo(tmp: Path, text: str) -> None:
    (tmp / "repo" / "hosts").mkdir(parents=True, exist_ok=True)
    (tmp / "repo" / "fleet.yaml").write_text(text)
    (tmp / "repo" / "hosts" / "h1.yaml").write_text("{}\n")


def test_a_hand_edited_ownership_record_is_a_clear_error(netns: Netns, tmp_path: Path) -> None:  # noqa: F811
    _repo(tmp_path, "{}\n")
    netns.run(["ipset", "create", "mgmt", "hash:net"])
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "ours.json").write_text(json.dumps({"ipset": {"mgmt": {"rules": 5}}}))
    rc, out = _cli(netns, tmp_path)
    assert rc == 1
    assert "the rules recorded for set 'mgmt' must be a list" in out
    assert "Traceback" not in out
    assert "mgmt" in netns.run(["ipset", "list", "-n"]).stdout  # untouched


def test_a_read_only_state_dir_stops_the_run_before_anything_is_created(
    netns: Netns,  # noqa: F811
    tmp_path: Path,
) -> None:
    _repo(tmp_path, fleet(A))
    (tmp_path / "state").mkdir(mode=0o700)
    # A read-only filesystem over the state dir, in a mount namespace of this run only.
    state = tmp_path / "state"
    mount = ("unshare", "-m", "sh", "-c", f'mount -t tmpfs -o ro,mode=0700 tmpfs {state} && "$@"',
             "sh")  # fmt: skip
    rc, out = _cli(netns, tmp_path, prefix=mount)
    assert rc == 1
    assert "cannot be written" in out and "nothing was applied" in out
    assert "Traceback" not in out
    assert "mgmt" not in netns.run(["ipset", "list", "-n"]).stdout


def test_a_remote_helper_url_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    r = reconcile(
        "--dry-run", "--repo", f"ext::sh -c touch% {marker}", "--host", "h1",
        "--state-dir", str(tmp_path / "state"), "--lock-file", str(tmp_path / "lock"),
    )  # fmt: skip
    assert r.returncode == 1
    assert "git remote helpers run programs" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


def test_an_interface_name_the_kernel_cannot_hold_is_invalid(tmp_path: Path) -> None:
    _repo(tmp_path, "nics:\n  ééééééééé:\n    offloads: {gso: off}\n")
    r = reconcile("validate", "--repo", str(tmp_path / "repo"))
    assert r.returncode == 1
    assert "is 18 bytes in UTF-8; the kernel allows 15" in r.stderr
