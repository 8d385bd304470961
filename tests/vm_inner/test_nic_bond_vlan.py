"""Bridge-port resolution through a bond and a VLAN, run INSIDE the test VM.

The development and CI machines' kernel has no bonding or 802.1Q support, so the netns test
``tests/kinds/nic/test_kernel.py::test_bridge_ports_through_bond_and_vlan`` skips there; Debian's
kernel in the VM has both (as modules), so it runs for real here, unchanged.
"""

from __future__ import annotations

import os
import subprocess

import pytest

if os.environ.get("RECONCILER_IN_VM") != "1":
    pytest.skip("runs only inside the test VM (reconciler/testvm.py)", allow_module_level=True)

from tests.kinds.nic.test_kernel import host, test_bridge_ports_through_bond_and_vlan

# Load the modules up front: the test's own probe must find the kernel support present.
for module in ("bonding", "8021q"):
    subprocess.run(["modprobe", module], check=True)

__all__ = ["host", "test_bridge_ports_through_bond_and_vlan"]
