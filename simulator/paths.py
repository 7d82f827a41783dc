"""Where data and built artifacts live: one place, so every entry point agrees."""

from __future__ import annotations

import os
from pathlib import Path

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir(explicit: str | Path | None = None) -> Path | None:
    """Return the raw-data folder: `explicit`, else `$BILLP_DATA`, else `../shared/data` if present.

    Returns None when no data folder exists; callers then fall back to the synthetic dataset.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("BILLP_DATA")
    if env:
        return Path(env).expanduser()
    default = _PROJECT_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


def cache_dir(explicit: str | Path | None = None) -> Path:
    """Return the artifact cache: `explicit`, else `$BILLP_CACHE`, else `~/.cache/billp`."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("BILLP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "billp"


def default_dataset() -> str:
    """Return `steam` when the real data is reachable, else the embedded `synthetic` dataset."""
    root = data_dir()
    if root is not None and (root / "steam" / "australian_users_items.parquet").is_file():
        return "steam"
    return "synthetic"
