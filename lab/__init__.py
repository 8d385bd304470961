"""The lab: the example fleet run for real in network namespaces, a small VM and libvirtd
daemons, plus the harnesses the tests share with it (the test VM, libvirtd nodes, the tarsnap
emulator). It lives outside the ``reconciler`` package, so no lab code ships in the wheel:
run it from a checkout with ``./scripts/lab`` (``python -m lab``)."""
