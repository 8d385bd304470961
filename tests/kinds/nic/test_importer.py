"""``reconcile import`` of NICs: the ifup-local parser (ring sizes too, which veth cannot
have), and round trips on a bridge with veth ports in a namespace: the script's offloads,
and the live settings of the NICs named; import, then the dry-run is empty."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler.errors import ValidationError
from reconciler.kinds.nic.ethtool import FeatureLive, LinkLive, RingsLive
from reconciler.kinds.nic.importer import from_live, from_script, offloads_of, parse_script
from reconciler.kinds.nic.provider import NicLive, NicState
from tests import importrun
from tests.netns import Netns

SCRIPT = """\
#!/bin/bash
# /sbin/ifup-local: ifup runs it with the interface's name
IFACE="$1"
case "$IFACE" in
  eth1)
    /sbin/ethtool -G eth1 rx 4096 tx 4096 ; /sbin/ethtool -K eth1 gso off tso off
    ;;
  eth2) ethtool --set-ring eth2 rx 512 rx-buf-len 2048 ;;
esac
ethtool -K "$IFACE" gro off          # only the running script knows $IFACE
ethtool -s eth1 speed 1000 duplex full
ethtool --offload eth1 \\
    gso on
logger "ifup-local done"
"""


def test_script_rings_offloads_and_what_is_ignored() -> None:
    nics, notes = parse_script(SCRIPT, "/sbin/ifup-local")
    found = from_script(nics, "/sbin/ifup-local")
    got = {r.name: r.value for r in found.resources}
    # The later line wins: gso on (line 12) over gso off (line 6).
    assert got == {
        "eth1": {"rings": {"rx": 4096, "tx": 4096}, "offloads": {"tso": False, "gso": True}},
        "eth2": {"rings": {"rx": 512}},
    }
    eth1 = next(r for r in found.resources if r.name == "eth1")
    assert eth1.notes == ("rings from /sbin/ifup-local:6", "offloads from /sbin/ifup-local:6,12")
    text = "\n".join(notes)
    assert "/sbin/ifup-local:10: ignored, it uses a shell variable" in text
    assert "/sbin/ifup-local:11: ignored, `ethtool -s`" in text
    assert "/sbin/ifup-local:8: ring setting rx-buf-len ignored" in text
    assert "6 line(s) without ethtool ignored: 3-5, 7, 9, 14" in text  # comments are not


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ethtool -G eth1 rx lots", "not a ring size: 'lots'"),
        ("ethtool -G eth1 rx 0", "not a ring size: '0'"),
        ("ethtool -K eth1 gsoo off", "unknown offload 'gsoo'"),
        ("ethtool -K eth1 gso maybe", "expected on or off"),
        ("ethtool -K eth1 gso", "expects NAME VALUE pairs"),
        ("ethtool -K", "no interface named"),
    ],
)
def test_bad_ethtool_lines_name_file_and_line(line: str, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_script(f"#!/bin/sh\n{line}\n", "ifup-local")
    assert "ifup-local:2:1:" in str(e.value) and message in str(e.value), str(e.value)


def _state(**features: tuple[bool, bool]) -> NicState:
    return NicState(
        RingsLive({"rx": 1024, "tx": 512, "rx-mini": 0}, {"rx": 4096, "tx": 4096, "rx-mini": 0}),
        {f: FeatureLive(active, fixed) for f, (active, fixed) in features.items()},
    )


def test_live_offloads_by_short_name_and_fixed_ones_left_out() -> None:
    state = _state(**{
        "tx-generic-segmentation": (False, False),
        "tx-tcp-segmentation": (True, False),
        "tx-tcp6-segmentation": (False, False),
        "rx-gro": (True, True),
        "rx-udp-gro-forwarding": (True, False),
    })  # fmt: skip
    assert offloads_of(state) == {
        "gso": False, "tx-tcp-segmentation": True, "tx-tcp6-segmentation": False,
    }  # fmt: skip
    assert offloads_of(state, every_feature=True)["rx-udp-gro-forwarding"] is True


def test_bridge_ports_share_under_ports_and_keep_their_own() -> None:
    links = {
        "br0": LinkLive("br0", "bridge"),
        "eth1": LinkLive("eth1", None, "br0"),
        "eth2": LinkLive("eth2", None, "br0"),
        "vnet0": LinkLive("vnet0", "tun", "br0"),
    }
    gso_off = _state(**{"tx-generic-segmentation": (False, False)})
    gso_on = _state(**{"tx-generic-segmentation": (True, False)})
    live = NicLive(links, {"br0": gso_on, "eth1": gso_off, "eth2": gso_on})
    found = from_live(["br0", "eth3"], live, "from ethtool")
    got = {r.name: r.value for r in found.resources}
    assert got["br0"] == {
        "offloads": {"gso": True}, "ports": {"rings": {"rx": 1024, "tx": 512}}
    }  # fmt: skip
    assert got["eth1"] == {"offloads": {"gso": False}}
    assert got["eth2"] == {"offloads": {"gso": True}}
    assert "VM ports skipped: vnet0" in "\n".join(
        next(r for r in found.resources if r.name == "br0").notes
    )
    assert [str(e) for e in found.errors] == ["nic/eth3: no NIC named eth3 on this host"]


# ------------------------------------------------------------------------- round trips
def _bridge(ns: Netns) -> None:
    ns.run(["ip", "link", "add", "br0", "type", "bridge"])
    for port in ("v1", "v2"):
        ns.run(["ip", "link", "add", port, "type", "veth", "peer", "name", f"{port}p"])
        ns.run(["ip", "link", "set", port, "master", "br0"])


@pytest.mark.kernel
def test_ifup_local_round_trip(netns: Netns, tmp_path: Path) -> None:
    _bridge(netns)
    script = tmp_path / "ifup-local"
    script.write_text(
        "#!/bin/bash\n"
        'if [ "$1" = v1 ]; then\n'
        "  /usr/sbin/ethtool -K v1 gso off tso off\n"
        "fi\n"
        "ethtool -K v2 gro on rx-udp-gro-forwarding on  # as a router wants\n"
        'ethtool -K "$1" sg on\n'
    )
    netns.run(["bash", str(script), "v1"])
    repo = importrun.new_repo(tmp_path)
    text = importrun.round_trip(
        repo, tmp_path, "--ifup-local", str(script), "--only", "nic", ns=netns
    )
    data = yaml.safe_load(text)
    assert data["nics"] == {
        "v1": {"offloads": {"gso": False, "tso": False}},
        "v2": {"offloads": {"gro": True, "rx-udp-gro-forwarding": True}},
    }
    assert f"# offloads from {script}:3" in text


@pytest.mark.kernel
def test_live_bridge_round_trip(netns: Netns, tmp_path: Path) -> None:
    _bridge(netns)
    netns.run(["ethtool", "-K", "v1", "gso", "off"])
    netns.run(["ethtool", "-K", "v2", "gso", "off", "tso", "off"])
    repo = importrun.new_repo(tmp_path)
    text = importrun.round_trip(repo, tmp_path, "--nic", "br0", "--only", "nic", ns=netns)
    nics = yaml.safe_load(text)["nics"]
    assert nics["br0"]["ports"]["offloads"]["gso"] is False
    # tso is not shared: each port has its own, the rest is under ports:.
    assert nics["v1"] == {"offloads": {"tso": True}}
    assert nics["v2"] == {"offloads": {"tso": False}}
    assert "# current values, from ethtool on host h1" in text


@pytest.mark.kernel
def test_missing_nic_is_an_error_of_that_nic(netns: Netns, tmp_path: Path) -> None:
    _bridge(netns)
    repo = importrun.new_repo(tmp_path)
    imp = importrun.import_to(repo, "--nic", "v1", "--nic", "nope0", "--only", "nic", ns=netns)
    assert imp.returncode == 1
    assert "error: nic/nope0: no NIC named nope0" in imp.stderr
    assert "Traceback" not in imp.stderr
    assert "v1:" in (repo / "hosts" / "h1.yaml").read_text()  # the others still imported
