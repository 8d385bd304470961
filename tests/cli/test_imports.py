"""A command imports only what it needs (issue 15: start fast).

Each case runs the real command line (``reconciler.cli.main``, what ``python -m reconciler``
and the ``reconcile`` script call) in a fresh interpreter, then records ``sys.modules`` as the
command left it. What was imported is the fact checked, never a time: the cost of an import
shows in ``bench/``, whether it happens at all shows here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import Netns

ROOT = Path(__file__).resolve().parents[2]

#: Runs the command line given after the output path, then writes the names of every
#: imported module to that path (also when the command exits through SystemExit).
WRAPPER = """
import json, sys
from reconciler.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as e:
    code = e.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

#: Third-party packages a command that does not use them must not load.
HEAVY = ("pyroute2", "libvirt", "git", "jsonschema")
PROVIDER = re.compile(r"reconciler\.kinds\.\w+\.provider")


def _imported(
    tmp_path: Path, *args: str, ns: Netns | None = None
) -> tuple[int, set[str], subprocess.CompletedProcess[str]]:
    """Run ``reconcile ARGS`` (inside ``ns`` if given): its exit code, the modules it
    imported, and the process (output captured)."""
    out = tmp_path / "modules.json"
    argv = [sys.executable, "-c", WRAPPER, str(out), *args]
    env = {**os.environ, "RECONCILER_METRICS_FILE": "", "PYTHONPATH": str(ROOT)}
    if ns is not None:
        proc = ns.run(argv, check=False, env=env)
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    assert out.exists(), f"the wrapper did not finish: {proc.stderr}"
    record = json.loads(out.read_text())
    return record["code"], set(record["modules"]), proc


def _loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


@pytest.mark.parametrize(
    ("args", "shows"),
    [
        (["--version"], "reconcile "),
        (["--help"], "usage: reconcile"),
        (["validate", "--help"], "--repo"),
    ],
    ids=["version", "help", "validate-help"],
)
def test_version_and_help_load_no_provider_and_no_heavy_package(
    tmp_path: Path, args: list[str], shows: str
) -> None:
    code, modules, proc = _imported(tmp_path, *args)
    assert code == 0 and shows in proc.stdout, proc.stdout + proc.stderr
    assert "reconciler.cli" in modules  # the real command line ran
    for package in HEAVY:
        assert _loaded(modules, package) == [], f"{args}: imports {package}"
    assert sorted(m for m in modules if PROVIDER.fullmatch(m)) == []


IPSET_ONLY = """\
ipsets:
  mgmt:
    type: hash:net
    family: inet
    members: [192.0.2.0/24, 198.51.100.7/32]
"""


@pytest.mark.parametrize(
    "only", [["--only", "ipset"], []], ids=["only-ipset", "every-kind-ipsets-declared"]
)
def test_ipset_dry_run_loads_neither_libvirt_nor_pyroute2(
    netns: Netns, tmp_path: Path, only: list[str]
) -> None:
    repo = tmp_path / "repo"
    (repo / "hosts").mkdir(parents=True)
    (repo / "fleet.yaml").write_text(IPSET_ONLY)
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    code, modules, proc = _imported(
        tmp_path,
        "--dry-run", "--detailed-exitcode", "--repo", str(repo), "--host", "h1", *only,
        "--state-dir", str(tmp_path / "state"), "--lock-file", str(tmp_path / "lock"),
        "--log-format", "json",
        ns=netns,
    )  # fmt: skip
    # A real plan was made: the set is to be created, so the ipset provider did run.
    assert code == 2, proc.stdout + proc.stderr
    assert "+ ipset/mgmt  create" in proc.stdout, proc.stdout
    assert "reconciler.kinds.ipset.provider" in modules
    for package in ("libvirt", "pyroute2"):
        assert _loaded(modules, package) == [], f"the ipset dry-run imports {package}"
    providers = sorted(m for m in modules if PROVIDER.fullmatch(m))
    if only:
        assert providers == ["reconciler.kinds.ipset.provider"]
    else:
        # Every kind is in the run, but nic and backup are idle (nothing declared, nothing
        # recorded: IdleProvider) and vm has no vms.yaml here: no provider of theirs is
        # built, and nothing of backup or vm beyond their descriptors is imported.
        assert providers == ["reconciler.kinds.ipset.provider"]
        for kind in ("backup", "vm"):
            assert _loaded(modules, f"reconciler.kinds.{kind}") == [f"reconciler.kinds.{kind}"]
