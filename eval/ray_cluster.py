"""Start and stop a real multi-node Ray cluster on this machine, as `ray start` would on many.

Tests and `bench/concurrency.py` need the executor to meet a cluster it did not start itself (a
head node and a worker node that joined it by address), not Ray's in-process `ray.init()`.
Each node is one `ray start --block` process in its own process group, so stopping the cluster
ends exactly the processes it started (never `ray stop`, which ends every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """Return a TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ray_bin() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else "ray"


@dataclass
class LocalCluster:
    """The processes of a running local cluster; `address` is what `--ray-address` takes."""

    address: str
    temp_dir: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every node (workers first): SIGTERM its group, SIGKILL what is left."""
        for proc in reversed(self.nodes):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in reversed(self.nodes):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # daemons the node left behind
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, timeout: float) -> None:
    """Block until `count` nodes are alive in the cluster at `address` (checked in a child)."""
    probe = (
        "import sys, time, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        f"deadline = time.monotonic() + {timeout}\n"
        f"while sum(n['Alive'] for n in ray.nodes()) < {count}:\n"
        "    if time.monotonic() > deadline: sys.exit(1)\n"
        "    time.sleep(0.2)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout + 30
    )
    if result.returncode != 0:
        raise RuntimeError(f"the Ray cluster at {address} did not get {count} nodes: {result}")


def start_cluster(nodes: int = 2, cpus_per_node: int = 1, timeout: float = 90.0) -> LocalCluster:
    """Start a head node plus `nodes - 1` nodes that join it by address, all on 127.0.0.1."""
    if nodes < 1 or cpus_per_node < 1:
        raise ValueError(f"a cluster needs >= 1 node of >= 1 CPU, got {nodes} x {cpus_per_node}")
    port = free_port()
    address = f"{HOST}:{port}"
    # Short path: Ray puts unix sockets under it (a 108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", f"--num-cpus={cpus_per_node}", f"--node-ip-address={HOST}"]
    common += ["--disable-usage-stats"]
    head = [_ray_bin(), "start", "--head", f"--port={port}", "--include-dashboard=false"]
    head += [f"--temp-dir={temp_dir}", *common]
    cluster = LocalCluster(address=address, temp_dir=temp_dir)
    log = open(temp_dir / "nodes.log", "ab")  # noqa: SIM115 - closed with the cluster's files
    try:
        cluster.nodes.append(
            subprocess.Popen(head, env=env, stdout=log, stderr=log, start_new_session=True)
        )
        _wait_for_nodes(address, 1, timeout)
        for _ in range(nodes - 1):
            join = [_ray_bin(), "start", f"--address={address}", *common]
            cluster.nodes.append(
                subprocess.Popen(join, env=env, stdout=log, stderr=log, start_new_session=True)
            )
        _wait_for_nodes(address, nodes, timeout)
    except BaseException:
        log.close()
        cluster.stop()
        raise
    log.close()
    return cluster


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[LocalCluster]:
    """Run a local multi-node cluster for the duration of the block."""
    cluster = start_cluster(nodes, cpus_per_node)
    try:
        yield cluster
    finally:
        cluster.stop()
