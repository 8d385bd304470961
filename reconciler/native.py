"""The optional C extension ``reconciler._netfast`` (reconciler/_netfast.c), or None.

The loops over a big set's members (its check, its list's parse, its sort, its ops, its
netlink entries, its dump) and the folding of long YAML lists run in C when the extension
is built (``scripts/setup`` builds it; pyproject.toml marks it optional). Each caller keeps
the Python loop the C stands for beside it, used when ``netfast`` is None or a function
answers None ("not the common case"), and ``tests/test_netfast.py`` checks that both give
the same answers. Callers read ``native.netfast`` when they run, so a test can set it to
None.
"""

from __future__ import annotations

from types import ModuleType

netfast: ModuleType | None
try:
    from reconciler import _netfast as netfast
except ImportError:  # not built: the Python loops
    netfast = None
