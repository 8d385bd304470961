"""The console script's exit (reconciler.cli.console): the exit code of main, standard
output flushed, exit handlers run, a non-daemon thread waited for; only the interpreter's
teardown is skipped. Each case is a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reconciler import __version__


def _console_after(setup: str, path: Path) -> subprocess.CompletedProcess[str]:
    """``reconcile --version`` through console(), in a process that first ran ``setup``
    (Python, with ``path`` the file it may write)."""
    code = (
        "import sys\n"
        "from reconciler import cli\n"
        "path = sys.argv[1]\n"
        f"{setup}"
        "sys.argv[1:] = ['--version']\n"
        "cli.console()\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_exit_code_and_output() -> None:
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--version"], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"reconcile {__version__}\n", "")
    # main's code, whatever it is: an unknown option is a usage error (docs/cli.md: exit 1)
    bad = subprocess.run([sys.executable, "-m", "reconciler", "--no-such-option"],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert bad.returncode == 1 and "unrecognized arguments" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_exit_handlers_run_and_output_is_flushed(tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    proc = _console_after(
        "import atexit\n"
        "atexit.register(lambda: open(path, 'w').write('ran'))\n"
        "sys.stdout.write('unflushed ')\n",
        mark,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"unflushed reconcile {__version__}\n"
    assert mark.read_text() == "ran"


def test_a_thread_still_running_is_waited_for(tmp_path: Path) -> None:
    mark = tmp_path / "done"
    proc = _console_after(
        "import threading, time\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    open(path, 'w').write('done')\n"
        "threading.Thread(target=late).start()\n",
        mark,
    )
    assert proc.returncode == 0, proc.stderr
    assert mark.read_text() == "done"


def test_a_closed_stdout_exits_1_without_a_traceback() -> None:
    # (argparse's own --help ignores a closed stdout, and exits 0.)
    for args in (["--version"],):
        proc = subprocess.Popen([sys.executable, "-m", "reconciler", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 1, args
        assert "Traceback" not in err, err
