"""A rollout worker killed mid-batch is restarted by Ray and its episodes are re-run; shutdown leaves no engine."""

import pytest

from memrl.agents import SamplingConfig
from memrl.recipes.schema import AgentCfg, EnvCfg, ResourcesCfg, RolloutCfg
from memrl.rl.rollout import RolloutManager

pytestmark = pytest.mark.slow


def test_killed_worker_is_restarted_and_the_batch_completes_and_shutdown_leaves_no_engine(tmp_path, tiny_dir,
                                                                                          ray_local):
    """A worker killed mid-batch is restarted and its episodes re-run; then shutdown ends every engine process of
    every worker, the restarted one's included (an orphaned CPU engine keeps its KV cache, gigabytes, until someone
    kills it by hand)."""
    import time

    import psutil
    import ray

    marker = tmp_path / "worker-died"
    mgr = RolloutManager(str(tiny_dir), rollout=RolloutCfg(max_model_len=1024, rollout_timeout=600),
                         resources=ResourcesCfg(), faults=[{"die_after_turns": 1, "once_file": str(marker)}])
    pids = []
    try:
        trajs, stats = mgr.rollout(list(range(8)), list(range(8)), EnvCfg(id="memrl.testing:LettersEnv"),
                                   AgentCfg(name="memsearcher", memory_tokens=16), SamplingConfig(12, 1.0, seed=0))
        actor_pids = ray.get([w.ready.remote() for w in mgr.workers])
        pids = [c.pid for p in actor_pids for c in psutil.Process(p).children(recursive=True)]
    finally:
        mgr.shutdown()
    assert marker.exists()  # the worker process really died mid-rollout
    assert stats.restarts == 1
    assert len(trajs) == 8 and not any(t.failed for t in trajs)
    assert [t.group_id for t in trajs] == list(range(8))
    assert all(len(t.contexts) == 2 for t in trajs)
    assert pids  # the restarted worker's engine processes
    deadline = time.monotonic() + 60
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(pids) == []


def _alive(pids):
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
