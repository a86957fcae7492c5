"""Kill a vLLM engine core whose owner was killed.

Vendor behaviour (vLLM 0.32, V1 engine): the EngineCore runs in a child process that does not watch its
parent. Its own workers watch the core through a death pipe (vllm/v1/executor/multiproc_executor.py), but
nothing watches the owner: SIGKILL of the process that made the engine (`memrl eval`, or a Ray rollout actor
that is SIGKILLed) leaves the core and its worker running under init, with the weights and
KV cache (~1 GB on CPU). SIGTERM and a normal exit are not the problem: the owner then shuts the engine
down itself.

The workaround: right after the engine starts, `guard` launches this file as a small watcher process
(psutil only, no torch). It polls once a second; when the owner is gone it kills the engine's processes,
and it exits by itself once they are gone. tests/agents/test_orphan_guard.py checks both that an
unguarded engine still outlives its killed owner (drop this module when that stops being true) and that a
guarded one does not.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

POLL_S = 1.0


def guard(owner: int, engines: list[int]) -> subprocess.Popen | None:
    """Start a watcher that kills `engines` (pids) once `owner` (a pid) is gone; None if nothing to guard."""
    if not engines:
        return None
    return subprocess.Popen(
        [sys.executable, __file__, str(owner), *map(str, engines)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the owner's process group: a killpg of the owner must not take it
    )


def children() -> set[int]:
    """Pids of this process's descendants; taken before and after an engine starts, the difference is the engine's."""
    return {c.pid for c in psutil.Process().children(recursive=True)}


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _procs(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass  # already gone: nothing to guard
    return found


def watch(owner: int, engines: list[int], poll_s: float = POLL_S) -> bool:
    """Block until the engines are gone; kill them if the owner goes first. True when it had to kill."""
    procs, boss = _procs(engines), _procs([owner])  # boss is empty when the owner is already gone
    while any(map(_alive, procs)):
        if not any(map(_alive, boss)):
            for p in procs:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            return True
        time.sleep(poll_s)
    return False


if __name__ == "__main__":
    watch(int(sys.argv[1]), [int(a) for a in sys.argv[2:]])
