"""A CPU engine decodes on every core memrl gives it (`memrl.device.omp_cores`), not on vLLM's auto choice."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")


def test_a_cpu_engine_runs_its_threads_on_every_core_we_give_it(vllm_tiny):
    """vLLM pins each OpenMP thread of an engine's worker process to one core of its binding. Under vLLM's own `auto`
    binding on 2 cores every worker thread is pinned to core 0 (the other is kept for its scheduler); with memrl's
    (`VLLM_CPU_OMP_THREADS_BIND` from `omp_cores`) the worker's threads cover every core it was given. Fails if vLLM
    stops reading the variable, or memrl stops setting it."""
    import psutil

    from memrl.device import omp_cores

    given = {int(c) for c in omp_cores(0, 1).split(",")}
    workers = [p for p in psutil.Process().children(recursive=True) if "Worker" in p.name()]
    assert workers, "no vLLM worker process found under this process"
    checked = 0
    for worker in workers:
        pinned: set[int] = set()
        try:
            threads = worker.threads()
        except psutil.Error:  # an engine that ended meanwhile
            continue
        for thread in threads:
            try:
                pinned |= os.sched_getaffinity(thread.id)
            except OSError:  # a thread that ended meanwhile
                pass
        checked += bool(pinned)
        assert not pinned or pinned == given, f"{worker.name()} threads run on cores {sorted(pinned)}, memrl gave {sorted(given)}"
    assert checked, "no live vLLM worker thread to check"
