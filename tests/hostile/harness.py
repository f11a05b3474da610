"""Run the real CLI on a hostile input, in a child process, and check what a user would see.

Every case of the corpus asserts the same promise: exit 2, one line on stderr that names the problem,
no traceback, nothing written to the output folder, no file of the user's touched, and (where a tiny
file could claim a huge allocation) a bounded peak memory, enforced with an address-space limit.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

GIB = 1 << 30
# Address space the CLI needs for the small models of the corpus: Python, numpy, OpenCV and ONNX
# Runtime map about 1.2 GiB of virtual memory before any work; 3 GiB leaves room for real work and
# stops any multi-gigabyte allocation a hostile file asks for.
DEFAULT_LIMIT = 3 * GIB
# ``python -m blackbox.cli ARGS`` that also writes its own peak RSS (KiB) to $BLACKBOX_TEST_PEAK_RSS at
# exit: the child's own figure. RUSAGE_CHILDREN would be the largest of every child this test process
# ever waited for (a Ray head started by an earlier test, say), not this one's.
_RSS_FILE = "BLACKBOX_TEST_PEAK_RSS"
_MEASURED = (
    "import atexit, os, resource, runpy\n"
    "def _peak():\n"
    "    with open(os.environ['BLACKBOX_TEST_PEAK_RSS'], 'w') as f:\n"
    "        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    "atexit.register(_peak)\n"
    "runpy.run_module('blackbox.cli', run_name='__main__', alter_sys=True)\n"
)


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_main(args: Sequence[str], capsys) -> Outcome:
    """``blackbox.cli.main(args)`` in this process, as an Outcome (argparse's exit becomes the code)."""
    from blackbox.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return Outcome(int(code), captured.out, captured.err, 0)


def run_cli(args: Sequence[str], *, cwd: Path | None = None, memory_limit: int | None = DEFAULT_LIMIT,
            timeout: float = 180, env: dict[str, str] | None = None, stdin: str | None = None) -> Outcome:
    """``python -m blackbox.cli ARGS`` in a child process with an address-space limit."""

    def limit() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    with tempfile.TemporaryDirectory() as scratch:
        rss_file = os.path.join(scratch, "peak-rss")
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", _RSS_FILE: rss_file, **(env or {})}
        done = subprocess.run([sys.executable, "-c", _MEASURED, *map(str, args)], cwd=cwd, env=child_env,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
                              input=stdin if stdin is not None else "")
        peak = int(Path(rss_file).read_text()) * 1024 if os.path.exists(rss_file) else 0
    return Outcome(done.returncode, done.stdout, done.stderr, peak)


def snapshot(*folders: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under the folders: (size, mtime_ns, mode). Equal snapshots: nothing was touched."""
    state = {}
    for folder in folders:
        if not Path(folder).exists():
            continue
        for path in sorted(Path(folder).rglob("*")):
            if path.is_symlink() or path.is_file():
                info = path.lstat()
                state[str(path)] = (info.st_size, info.st_mtime_ns, info.st_mode)
            elif path.is_dir():
                state[str(path)] = (0, 0, path.lstat().st_mode)
    return state


def assert_user_error(outcome: Outcome, *, mentions: Sequence[str] = (), before: dict | None = None,
                      folders: Sequence[Path] = ()) -> str:
    """Exit 2, exactly one line ``blackbox: error: ...`` mentioning each of ``mentions`` (case-insensitive),
    no traceback, and ``folders`` exactly as in ``before`` (nothing written, nothing removed)."""
    assert outcome.returncode == 2, f"exit {outcome.returncode}, stderr:\n{outcome.stderr[-3000:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert len(outcome.lines) == 1, f"expected one line, got:\n{outcome.stderr[-3000:]}"
    line = outcome.lines[0]
    assert line.startswith("blackbox: error: "), line
    for word in mentions:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    if before is not None:
        after = snapshot(*folders)
        assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))[:10]}"
    return line
