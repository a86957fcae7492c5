"""A CPU engine started in a Ray actor forks its model worker from the engine core (agents/engine_fork.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow


def test_in_a_ray_actor_vllm_spawns_the_worker_and_ours_forks_it(tiny_dir, ray_local, capsys):
    """vLLM forces `spawn` in a Ray actor and the engine core passes it on to its worker: a plain engine's worker
    is a fresh interpreter, without the core's modules (drop agents/engine_fork.py when this stops being true). An
    engine with memrl's engine arguments forks the worker from the core, which then has them. Runs the
    `memrl bench engine_start` benchmark once; its times are printed, not checked."""
    from memrl.bench import engine_start

    out = engine_start.main(["--model", str(tiny_dir), "--reps", "1"])
    assert out["vllm default"]["worker_forked"] == [False]
    assert out["memrl"]["worker_forked"] == [True]
    assert all(s > 0 for v in engine_start.VARIANTS for s in out[v]["start_s"]) and out["ratio"] > 0
    printed = capsys.readouterr().out
    assert "| memrl | forked |" in printed and "| vllm default | spawned |" in printed
