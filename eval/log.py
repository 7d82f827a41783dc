"""Keep a run's finished episodes in one append-only JSON-lines file that survives SIGKILL.

Each finished episode is one line, written with a single `write` of the whole line, flushed and
fsynced before the caller moves on; so after a crash the file holds whole lines plus, at worst,
one torn last line, which `load()` cuts off (that episode simply runs again). A line is keyed by
(method, seed, phase, user): resuming skips every key already present, so no episode is lost and
none is recorded twice.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

EPISODES_FILE = "episodes.jsonl"

EpisodeKey = tuple[str, int, str, int]


def episode_key(record: Mapping[str, Any]) -> EpisodeKey:
    """Return the identity of an episode record."""
    return (str(record["method"]), int(record["seed"]), str(record["phase"]), int(record["user"]))


class EpisodeLog:
    """Append and read episode records of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / EPISODES_FILE
        self._lock = threading.Lock()
        self._records: dict[EpisodeKey, dict[str, Any]] = {}
        self.torn_bytes = 0
        self._load()

    def _load(self) -> None:
        """Read every whole line; truncate a torn tail left by a crash mid-write."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                break
            self._records[episode_key(record)] = record
            good += len(line)
        if good < len(data):
            self.torn_bytes = len(data) - good
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: EpisodeKey) -> dict[str, Any] | None:
        """Return the record of `key`, or None."""
        return self._records.get(key)

    def records(self) -> list[dict[str, Any]]:
        """Return every record, in the order they were written."""
        return list(self._records.values())

    def select(self, **match: Any) -> list[dict[str, Any]]:
        """Return the records whose fields equal `match` (e.g. method="billp", phase="test")."""
        return [r for r in self._records.values() if all(r.get(k) == v for k, v in match.items())]

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record durably; raise if its key is already recorded."""
        key = episode_key(record)
        line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        with self._lock:
            if key in self._records:
                raise ValueError(f"episode {key} is already recorded in {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self._records[key] = dict(record)

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append several records."""
        for record in records:
            self.append(record)
