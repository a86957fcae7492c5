"""A private multi-node Ray cluster on this machine, for the cluster tests: a head with the dashboard (Jobs API) and
more nodes, each its own `ray start` process group on its own ports, with its own environment and working directory,
and optionally its own view of the filesystem (paths hidden from it under an empty tmpfs in a private mount
namespace: what a node of a real cluster does not see of another node's disk).

Not `ray stop` at the end: that would also stop the test session's own `ray.init` cluster (tests/conftest.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"


@dataclass
class Node:
    """One node: CPUs it offers, extra environment, working directory, paths it must not see."""

    cpus: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    hide: list[Path] = field(default_factory=list)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def can_hide_paths() -> bool:
    """Whether this machine lets a process mount a tmpfs in a private mount namespace (`unshare -m`)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs none /mnt 2>/dev/null || mount -t tmpfs none /tmp"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _command(args: list[str], hide: list[Path]) -> list[str]:
    """`args`, run in a private mount namespace with every `hide` path covered by an empty tmpfs."""
    if not hide:
        return args
    mounts = " && ".join(f"mount -t tmpfs none {shlex.quote(str(p))}" for p in hide)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && exec {shlex.join(args)}"]


def _node_ports() -> list[str]:
    nm, om, agent, agent_grpc, metrics, env_agent = free_ports(6)
    return [f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={env_agent}"]


@contextmanager
def local_cluster(log_dir: Path, nodes: list[Node]) -> Iterator[str]:
    """Start `nodes` (the first is the head), wait until every one is alive, yield the dashboard address
    (http://...), then kill each node's process group."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    temp_dir = f"/tmp/rt{uuid.uuid4().hex[:8]}"  # Ray's socket paths must stay under 107 characters
    gcs, dash, client = free_ports(3)
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray >= 2.5x turns token auth on when ~/.ray/auth_token exists (any earlier ray.init writes one);
    # these tests are about submission and placement, so the cluster runs without it.
    base["RAY_AUTH_MODE"] = "disabled"
    # Jobs run `memrl train`: on the cluster image it is on PATH; here it is in this venv.
    base["PATH"] = f"{RAY.parent}{os.pathsep}{base.get('PATH', '')}"
    procs: list[subprocess.Popen] = []
    logs = [log_dir / f"ray-node{i}.log" for i in range(len(nodes))]

    def start(i: int, args: list[str]) -> None:
        node = nodes[i]
        procs.append(subprocess.Popen(_command([str(RAY), "start", "--block", f"--num-cpus={node.cpus}",
                                                "--disable-usage-stats", *args, *_node_ports()], node.hide),
                                      env={**base, **node.env}, cwd=node.cwd, stdout=logs[i].open("w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))

    def kill() -> str:
        for proc in reversed(procs):
            try:  # `ray start --block` drains the node and stops the Ray processes it started on SIGTERM
                proc.terminate()
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in its process group
            except ProcessLookupError:
                pass
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())

    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 240
    try:
        start(0, ["--head", f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                  "--include-dashboard=true", f"--temp-dir={temp_dir}", f"--ray-client-server-port={client}"])
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except ConnectionError:
                pass
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray head did not serve its Jobs API at {address}")
            time.sleep(1)
        for i in range(1, len(nodes)):
            start(i, [f"--address=127.0.0.1:{gcs}"])
        while len([n for n in list_nodes(address=address) if n.state == "ALIVE"]) < len(nodes):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError("not every Ray node joined within 240 s")
            time.sleep(1)
    except BaseException as exc:
        raise RuntimeError(f"{exc}\n{kill()}") from exc
    try:
        yield address
    finally:
        kill()
