"""reconciler.runner.run: what every external command gets (output captured, stdin from
/dev/null unless given, a timeout that kills), and the errors it raises."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from reconciler import runner
from reconciler.errors import CommandError, CommandNotFound, CommandTimeout


def test_output_and_exit_status_are_returned() -> None:
    proc = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"out\n", b"err\n")
    assert proc.args == ["sh", "-c", "echo out; echo err >&2; exit 3"]


def test_text_and_input() -> None:
    proc = runner.run(["tr", "a-z", "A-Z"], timeout=10, text=True, input="héllo\n")
    assert proc.stdout == "HéLLO\n"


def test_stdin_is_dev_null_unless_given(tmp_path: Path) -> None:
    # A command that would wait for a terminal gets end-of-file at once.
    assert runner.run(["cat"], timeout=10).stdout == b""
    src = tmp_path / "in"
    src.write_bytes(b"from a file\n")
    with src.open("rb") as f:
        assert runner.run(["cat"], timeout=10, stdin=f).stdout == b"from a file\n"


def test_env_and_cwd(tmp_path: Path) -> None:
    proc = runner.run(["sh", "-c", 'echo "$X"; pwd'], timeout=10, text=True,
                      env={"X": "y", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)  # fmt: skip
    assert proc.stdout.split("\n")[:2] == ["y", str(tmp_path)]


def test_timeout_kills_and_raises() -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimeout) as e:
        runner.run(["sleep", "30"], timeout=0.3, address="ipset/mgmt")
    assert time.monotonic() - start < 10
    assert e.value.address == "ipset/mgmt"
    assert "sleep 30 did not finish within 0.3 s and was killed" in e.value.message
    # and no child is left: the sleep was killed and reaped
    left = subprocess.run(["pgrep", "-f", "^sleep 30$"], capture_output=True, check=False)
    assert left.stdout == b""


def test_a_command_that_finishes_is_not_a_timeout() -> None:
    for _ in range(20):
        assert runner.run(["true"], timeout=5).returncode == 0


def test_missing_program_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CommandNotFound) as e:
        runner.run(["no-such-program-here", "x"], timeout=5)
    assert e.value.program == "no-such-program-here"
    with pytest.raises(CommandError, match=r"directory .* does not exist"):
        runner.run(["true"], timeout=5, cwd=tmp_path / "gone")
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(CommandError, match="cannot run"):
        runner.run([str(script)], timeout=5)


def test_bad_calls_are_refused() -> None:
    with pytest.raises(ValueError):
        runner.run([], timeout=5)
    with pytest.raises(ValueError):
        runner.run(["true"], timeout=0)
