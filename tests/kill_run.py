"""Run `billp` in its own process group and SIGKILL the group right after its Nth recorded episode.

Shared by the resume tests of the Ray executor and the Postgres store: both prove that a run
killed past its first learning batch resumes to the undisturbed run's episodes. The kill is not
timed: this file, run as a script, wraps `EpisodeLog.append` so that the append that writes the
Nth record is followed at once by SIGKILL to the whole group (the driver and anything it spawned).
However loaded the machine, the run dies with exactly N episodes recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HANG_GUARD_S = 600  # only a hung run waits this long; the kill itself never waits on a clock


def kill_after_records(
    args: list[str], log: Path, records: int, env: dict[str, str] | None = None
) -> None:
    """Run the `python -m eval.cli ...` command `args`; return once it killed itself at `records`.

    `log` is the run's episode log (the file the Nth record lands in).
    """
    if args[1:3] != ["-m", "eval.cli"]:
        raise ValueError(f"expected [python, '-m', 'eval.cli', ...], got {args[:3]}")
    script = [args[0], str(Path(__file__).resolve()), str(log), str(records), *args[3:]]
    proc = subprocess.run(
        script,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    why = proc.stderr.decode(errors="replace")[-2000:]
    assert proc.returncode == -signal.SIGKILL, f"run was not killed ({proc.returncode}):\n{why}"


def _run_and_die(log: Path, records: int, argv: list[str]) -> None:
    """Run the CLI; SIGKILL this process group right after the `records`-th append to `log`."""
    from eval.cli import main
    from eval.log import EpisodeLog

    append = EpisodeLog.append

    def append_then_maybe_die(self: EpisodeLog, record) -> None:  # type: ignore[no-untyped-def]
        append(self, record)
        if log.is_file() and len(log.read_bytes().splitlines()) >= records:
            os.killpg(0, signal.SIGKILL)

    EpisodeLog.append = append_then_maybe_die  # type: ignore[method-assign]
    sys.argv = ["billp", *argv]
    main()


if __name__ == "__main__":  # python tests/kill_run.py LOG RECORDS billp-args...
    _run_and_die(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
