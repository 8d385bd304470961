"""Host configurations for tests, set the way a host sets them: written to a file (in the
test's temporary directory) and read by :func:`reconciler.hostconfig.load`, or passed to the
real command line with ``--config`` / ``RECONCILER_CONFIG``. Never through the repository.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler import hostconfig
from reconciler.hostconfig import HostConfig

#: What the example fleet (desired-state/) names on its hosts: the default directories and
#: tarsnap's own default key file and cache (fleet.yaml), as the lab's hosts allow.
EXAMPLE_ALLOWED_DIRS = (
    *hostconfig.DEFAULT_ALLOWED_DIRS,
    "/root/tarsnap.key",
    "/usr/local/tarsnap-cache",
)


def write(
    directory: Path,
    *,
    tarsnap: str | None = None,
    restic: str | None = None,
    allowed_dirs: Sequence[str | Path] | None = None,
    allow_test_driver: bool | None = None,
    name: str = "host-config.yaml",
) -> Path:
    """Write a host configuration file into ``directory`` with the settings given (the
    others left to their defaults) and return its path."""
    doc: dict[str, object] = {}
    commands = {k: v for k, v in (("tarsnap", tarsnap), ("restic", restic)) if v is not None}
    if commands:
        doc["commands"] = commands
    if allowed_dirs is not None:
        doc["allowed_dirs"] = [str(d) for d in allowed_dirs]
    if allow_test_driver is not None:
        doc["libvirt"] = {"allow_test_driver": allow_test_driver}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(doc) if doc else "# defaults\n")
    path.chmod(0o644)
    return path


def load(directory: Path, **settings: Any) -> HostConfig:
    """:func:`write` the settings into ``directory`` and read them back as a host does."""
    return hostconfig.load(write(directory, **settings))


def example(directory: Path | None = None) -> HostConfig:
    """The host configuration the example fleet (desired-state/) is valid under
    (:data:`EXAMPLE_ALLOWED_DIRS`), written to ``directory`` (default: a temporary
    directory, removed once read) and read back."""
    return _load_in(directory, allowed_dirs=EXAMPLE_ALLOWED_DIRS)


def permissive(directory: Path | None = None) -> HostConfig:
    """A host configuration for tests of something else than host policy: any absolute
    path allowed (``allowed_dirs: [/]``) and libvirt's test driver on; written to
    ``directory`` (default: a temporary directory, removed once read)."""
    return _load_in(directory, allowed_dirs=["/"], allow_test_driver=True)


def _load_in(directory: Path | None, **settings: Any) -> HostConfig:
    if directory is not None:
        return load(directory, **settings)
    with tempfile.TemporaryDirectory(prefix="hostcfg-") as tmp:
        return load(Path(tmp), **settings)


def env_with(path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with ``RECONCILER_CONFIG`` naming ``path``."""
    return {**(os.environ if env is None else env), hostconfig.ENV_VAR: str(path)}
