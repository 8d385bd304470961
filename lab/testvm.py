"""Run commands, and groups of pytest tests, inside a small throw-away VM with real NICs.

Some behaviour can only be tested on real NIC drivers: veth has no ring sizes, while QEMU's
``-device e1000`` is driven by the kernel's real ``e1000`` driver, which supports
``ethtool -G`` up to 4096 RX/TX descriptors. This module boots such a VM with virtme-ng
(``vng``, from PyPI) and QEMU, using Debian's ``linux-image-amd64`` kernel and its modules:

* The guest sees the host's own root filesystem over 9p, read-only, with copy-on-write
  overlays on ``/etc``, ``/usr``, ``/var``, ``/tmp`` … and on the repository checkout, so the
  checkout and its ``.venv`` are visible at the same path and nothing the guest writes reaches
  the host.
* The VM's NICs are ``-device e1000`` (or ``nic_model``), each on its own QEMU user-mode
  backend with ``restrict=on``: the guest gets a link with carrier, but no route anywhere,
  and nothing on the host's network is created or changed (no bridge, no tap).
* QEMU runs under TCG software emulation unless ``RECONCILER_VM_KVM=1``: on the machines this
  project runs on ``/dev/kvm`` exists but KVM fails (``-cpu host`` aborts on an MSR write,
  other CPU models hang), so software emulation is the reliable default.
* In the guest the test NICs are renamed ``eth0``, ``eth1`` … in PCI order (udev would call
  them ``enp0s9``/``ens10`` depending on the machine type) and their names are exported to
  the command as ``RECONCILER_VM_NICS=eth0,eth1``. They start administratively down, with
  their driver's default ring sizes (256 for e1000).

Everything is slow in the guest (TCG runs code ~7x slower, and every file access is a 9p round
trip: ``python -c pass`` from the venv takes 3-4 s, a ``reconcile`` run of the nic kind 7-10 s,
more under load; 2026-11-29, two cores). Booting to the command takes 10-20 s, so run a whole
group of tests in one boot with :func:`run_pytest_in_vm`. Set
``RECONCILER_VM_KERNEL=/boot/vmlinuz-…`` to choose the kernel; by default it is the newest
``/boot/vmlinuz-*`` whose modules include the NIC driver.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout the tests run from; the guest sees it at the same path."""

VENV_BIN = REPO_ROOT / ".venv" / "bin"

SETUP_HINT = "installed by scripts/setup"

# QEMU device model -> the guest kernel driver that binds to it.
NIC_DRIVERS: dict[str, str] = {
    "e1000": "e1000",
    "e1000e": "e1000e",
    "igb": "igb",
    "rtl8139": "8139too",
    "virtio-net-pci": "virtio_net",
    "vmxnet3": "vmxnet3",
}

# Modules udev would load in the guest for emulated hardware the tests never use. Loading them
# (signature checks, crypto self-tests) under software emulation costs ~10 s of every boot;
# blacklisting only stops udev's automatic loading, an explicit modprobe still works.
_SLOW_UNUSED_MODULES = (
    "kvm,kvm_amd,kvm_intel,ccp,irqbypass,sr_mod,cdrom,sg,pcspkr,iTCO_wdt,iTCO_vendor_support,"
    "i2c_i801,lpc_ich,ahci,libahci,crc32_pclmul,crc32c_intel,crct10dif_pclmul,"
    "ghash_clmulni_intel,sha512_ssse3,sha256_ssse3,sha1_ssse3,aesni_intel,polyval_clmulni,"
    "psmouse,serio_raw,evdev,powernow_k8,i6300esb"
)

_GUEST_SCRIPT = r"""
set -e
driver={driver}
modprobe "$driver" 2>/dev/null || true
found=""
for dev in /sys/class/net/*; do
    [ -e "$dev/device/driver" ] || continue
    [ "$(basename "$(readlink -f "$dev/device/driver")")" = "$driver" ] || continue
    found="$found $(basename "$(readlink -f "$dev/device")")=$(basename "$dev")"
done
i=0
nics=""
for pair in $(printf '%s\n' $found | sort); do
    ip link set dev "${{pair#*=}}" name "rvmtmp$i"
    i=$((i + 1))
done
j=0
while [ "$j" -lt "$i" ]; do
    ip link set dev "rvmtmp$j" name "eth$j"
    nics="${{nics:+$nics,}}eth$j"
    j=$((j + 1))
done
if [ "$i" -ne {nics} ]; then
    echo "vm.py: expected {nics} NICs driven by $driver in the guest, found $i" >&2
    ip -br link >&2
    exit 125
fi
export RECONCILER_VM_NICS="$nics" RECONCILER_IN_VM=1 PYTHONDONTWRITEBYTECODE=1
cd {cwd}
set +e
{command}
"""


def search_path() -> str:
    return os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)])


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=search_path())


def _kernel_release(image: Path) -> str:
    return image.name.removeprefix("vmlinuz-")


def _has_module(release: str, driver: str) -> bool:
    moddir = Path("/lib/modules") / release
    if not (moddir / "modules.dep").is_file():
        return False
    if (moddir / "modules.builtin").is_file() and re.search(
        rf"/{re.escape(driver)}\.ko\b", (moddir / "modules.builtin").read_text()
    ):
        return True
    return any(moddir.rglob(f"{driver}.ko*"))


def find_kernel(driver: str = "e1000") -> Path | None:
    """Return the kernel image to boot: ``$RECONCILER_VM_KERNEL`` or the newest usable one.

    A usable image is a readable ``/boot/vmlinuz-<release>`` whose ``/lib/modules/<release>``
    has ``modules.dep`` and the NIC ``driver`` (the host's running kernel may be a custom one
    without an image in ``/boot``, so the running release is not assumed).
    """
    override = os.environ.get("RECONCILER_VM_KERNEL")
    if override:
        path = Path(override)
        return path if path.is_file() and os.access(path, os.R_OK) else None
    images = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    for image in reversed(images):
        if os.access(image, os.R_OK) and _has_module(_kernel_release(image), driver):
            return image
    return None


def vm_unavailable_reason(nic_model: str = "e1000") -> str | None:
    """Return None if a VM with ``nic_model`` NICs can be booted here, else why not.

    The reason names the missing tool or package and how to get it, e.g.
    ``"vng not found (pip install virtme-ng; installed by scripts/setup)"``.
    """
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"needs Linux on x86_64, this is {platform.system()} on {platform.machine()}"
    if _which("qemu-system-x86_64") is None:
        return f"qemu-system-x86_64 not found (apt-get install qemu-system-x86; {SETUP_HINT})"
    for tool in ("vng", "virtme-run"):
        if _which(tool) is None:
            return f"{tool} not found (pip install virtme-ng; {SETUP_HINT})"
    if _which("busybox") is None:
        return f"busybox not found (apt-get install busybox-static; {SETUP_HINT})"
    driver = NIC_DRIVERS.get(nic_model, nic_model)
    override = os.environ.get("RECONCILER_VM_KERNEL")
    kernel = find_kernel(driver)
    if kernel is None:
        if override:
            return f"RECONCILER_VM_KERNEL={override} is not a readable kernel image"
        return (
            "no readable /boot/vmlinuz-* with modules (including the NIC driver "
            f"{driver}) in /lib/modules (apt-get install linux-image-amd64; {SETUP_HINT})"
        )
    return None


def _qemu_nic_opts(nics: int, nic_model: str) -> list[str]:
    opts: list[str] = []
    for i in range(nics):
        # User-mode backend, restricted: the link has a peer (carrier up) but no route out,
        # and nothing is created on the host. romfile= skips the iPXE boot ROM (not needed
        # with -kernel, and it would need the ipxe-qemu package).
        opts += [
            "-netdev",
            f"user,id=rvmnet{i},restrict=on",
            "-device",
            f"{nic_model},netdev=rvmnet{i},romfile=",
        ]
    return opts


def vng_command(
    command: Sequence[str],
    *,
    nics: int = 2,
    nic_model: str = "e1000",
    memory: str = "1G",
    cwd: Path = REPO_ROOT,
    script_path: Path,
) -> list[str]:
    """Return the host command line that boots the VM and runs ``command`` in it.

    Writes the guest-side wrapper (NIC renaming, environment, ``cd``) to ``script_path``, which
    must stay in place until the VM has run it.
    """
    driver = NIC_DRIVERS.get(nic_model, nic_model)
    kernel = find_kernel(driver)
    if kernel is None:
        raise RuntimeError(vm_unavailable_reason(nic_model) or "no usable kernel")
    vng = _which("vng")
    assert vng is not None, vm_unavailable_reason(nic_model)
    script = _GUEST_SCRIPT.format(
        driver=shlex.quote(driver),
        nics=int(nics),
        cwd=shlex.quote(str(cwd)),
        command=shlex.join(command),
    )
    # The script goes in a file the guest reads through its view of the host's filesystem:
    # ``vng --exec`` passes its text on the kernel command line, which holds only 2048 bytes.
    script_path.write_text(script)
    argv = [
        vng,
        "--run",
        str(kernel),
        "--memory",
        memory,
        "--overlay-rwdir",
        str(REPO_ROOT),
        "--append",
        f"modprobe.blacklist={_SLOW_UNUSED_MODULES}",
        # One "=" word: argparse would take a separate "-netdev …" word for an option.
        "--qemu-opts=" + shlex.join(_qemu_nic_opts(nics, nic_model)),
        "--exec",
        f"sh {shlex.quote(str(script_path))}",
    ]
    if os.environ.get("RECONCILER_VM_KVM") != "1":
        argv.insert(1, "--disable-kvm")
    return argv


def run_in_vm(
    command: list[str],
    *,
    nics: int = 2,
    nic_model: str = "e1000",
    timeout: float = 300,
    memory: str = "1G",
) -> subprocess.CompletedProcess[str]:
    """Boot a fresh VM, run ``command`` in it as root, and return its result.

    The VM has ``nics`` NICs of QEMU model ``nic_model`` (driver ``e1000`` for ``e1000``),
    named ``eth0`` … ``eth<nics-1>`` in the guest and listed, comma-separated, in the
    command's environment as ``RECONCILER_VM_NICS``; ``RECONCILER_IN_VM=1`` is set too. The
    command runs in the repository root (:data:`REPO_ROOT`, the same path as on the host,
    writable through a guest-only overlay). Its exit code, stdout and stderr come back in
    the result; exit code 125 with a message on stderr means the guest did not get the NICs
    asked for. Nothing persists between calls: every call boots a new VM.

    Raises ``subprocess.TimeoutExpired`` (after killing QEMU) if the whole run, boot
    included, takes longer than ``timeout`` seconds, and ``RuntimeError`` if no VM can be
    booted here (see :func:`vm_unavailable_reason`).
    """
    reason = vm_unavailable_reason(nic_model)
    if reason is not None:
        raise RuntimeError(f"cannot boot a VM: {reason}")
    with tempfile.TemporaryDirectory(prefix="reconciler-vm-") as tmp:
        argv = vng_command(
            command,
            nics=nics,
            nic_model=nic_model,
            memory=memory,
            script_path=Path(tmp) / "guest.sh",
        )
        return _vng(argv, timeout)


def _vng(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the ``vng`` command line ``argv``; kill it with its QEMU after ``timeout`` s."""
    env = dict(os.environ, PATH=search_path())
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,  # vng -> virtme-run -> qemu: kill them as one group
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr) from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def run_pytest_in_vm(
    paths: list[str],
    *,
    nics: int = 2,
    extra_args: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``pytest`` on ``paths`` (relative to the repository root) in one VM boot.

    Runs ``<repo>/.venv/bin/python -m pytest -q -p no:cacheprovider -p no:hypothesispytest
    <extra_args> <paths>``
    with ``RECONCILER_IN_VM=1`` and ``RECONCILER_VM_NICS`` set (see :func:`run_in_vm`), and
    returns pytest's exit code and output.
    """
    python = str(VENV_BIN / "python")
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    # Every file access in the guest is a round trip over 9p under software emulation, so
    # imports are slow: hypothesis's pytest plugin alone costs ~25 s at startup. Tests that
    # import hypothesis themselves still work without the plugin.
    command += ["-p", "no:hypothesispytest", *extra_args, *paths]
    return run_in_vm(command, nics=nics, timeout=timeout)
