"""Shared pytest fixtures."""

import os

from tests.netns import netns

__all__ = ["netns"]

# tests/vm_inner/ runs inside the test VM (tests/lab/test_lab_vm.py boots it and sets
# RECONCILER_IN_VM=1); on the host those modules are not collected at all.
collect_ignore = [] if os.environ.get("RECONCILER_IN_VM") == "1" else ["vm_inner"]
