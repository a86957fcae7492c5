"""Rollout worker faults, on one real engine: a worker killed mid-batch is restarted by Ray and its episodes are
re-run; a slow chunk that keeps generating completes while a hung one stops the run; shutdown leaves no engine."""

import pytest

from memrl.agents import SamplingConfig
from memrl.recipes.schema import AgentCfg, EnvCfg, ResourcesCfg, RolloutCfg
from memrl.rl.rollout import RolloutManager

pytestmark = pytest.mark.slow


def test_killed_worker_is_restarted_slow_one_finishes_hung_one_stops_the_run_and_shutdown_leaves_no_engine(
        tmp_path, tiny_dir, ray_local):
    """1. A worker killed mid-batch is restarted and its episodes re-run.
    2. rollout.rollout_timeout bounds the time a busy worker goes without finishing a generation, not a chunk's
    length: with each generation round slowed to 2.5 s the chunk runs past a 4 s timeout and still completes (a
    long CPU eval point did not, session 25); a worker that stops generating stops the run with a TimeoutError
    that names it.
    3. Shutdown ends every engine process of every worker, the restarted (and now hung) one's included (an orphaned
    CPU engine keeps its KV cache, gigabytes, until someone kills it by hand)."""
    import time

    import psutil
    import ray

    marker, sleep_file = tmp_path / "worker-died", tmp_path / "turn-sleep"
    mgr = RolloutManager(str(tiny_dir), rollout=RolloutCfg(max_model_len=1024, rollout_timeout=600),
                         resources=ResourcesCfg(),
                         faults=[{"die_after_turns": 1, "once_file": str(marker), "turn_sleep_file": str(sleep_file)}])
    env, agent = EnvCfg(id="memrl.testing:LettersEnv"), AgentCfg(name="memsearcher", memory_tokens=16)
    pids = []
    try:
        trajs, stats = mgr.rollout(list(range(8)), list(range(8)), env, agent, SamplingConfig(12, 1.0, seed=0))
        actor_pids = ray.get([w.ready.remote() for w in mgr.workers])
        pids = [c.pid for p in actor_pids for c in psutil.Process(p).children(recursive=True)]
        assert marker.exists()  # the worker process really died mid-rollout
        assert stats.restarts == 1
        assert len(trajs) == 8 and not any(t.failed for t in trajs)
        assert [t.group_id for t in trajs] == list(range(8))
        assert all(len(t.contexts) == 2 for t in trajs)

        mgr.timeout = 4.0  # after the engine's start, which the same timeout bounds and which takes longer
        sleep_file.write_text("2.5")
        trajs, stats = mgr.rollout(list(range(4)), list(range(4)), env, agent, SamplingConfig(12, 1.0, seed=0))
        assert len(trajs) == 4 and not any(t.failed for t in trajs)
        assert stats.wall_time > 4  # the chunk itself outlived the timeout: only its progress kept it going
        assert stats.restarts == 0
        sleep_file.write_text("3600")
        with pytest.raises(TimeoutError, match="rollout worker 0 finished no generation"):
            mgr.rollout(list(range(2)), list(range(2)), env, agent, SamplingConfig(12, 1.0, seed=0))
    finally:
        mgr.shutdown()
    assert pids  # the restarted worker's engine processes
    deadline = time.monotonic() + 60
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(pids) == []


def _alive(pids):
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
