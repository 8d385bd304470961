"""The product wheel holds the reconciler package and nothing of the lab (issue: the lab
lives outside the product, in lab/): built as a user would, with pip."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_no_lab_code_and_every_kind_schema_part(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("reconciler-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    name, version = wheel.name.split("-")[:2]  # a platform wheel: it holds the C extension
    assert tops == {"reconciler", f"{name}-{version}.dist-info"}, tops
    assert [n for n in names if n.startswith("reconciler/_netfast.") and n.endswith(".so")]
    assert not [n for n in names if "lab" in Path(n).stem.lower() or "/lab/" in n]
    assert not [n for n in names if "fake_tarsnap" in n]
    for kind in ("ipset", "nic", "backup"):
        assert f"reconciler/kinds/{kind}/schema.json" in names
    assert "reconciler/schemas/host.schema.json" in names
    assert "reconciler/host.schema.base.json" in names
