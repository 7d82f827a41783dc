"""Start a `billp` run in its own process group and SIGKILL it once it has recorded N episodes.

Shared by the resume tests of the Ray executor and the Postgres store: both prove that a run
killed past its first learning batch resumes to the undisturbed run's episodes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_records(
    args: list[str], log: Path, records: int, env: dict[str, str] | None = None
) -> None:
    """Run `args` (slowed by `--step-pause`) and kill its process group at `records` lines."""
    proc = subprocess.Popen(
        [*args, "--step-pause", "0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_bytes().splitlines()) >= records:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read().decode()}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
