"""A rollout worker killed mid-batch is restarted by Ray and its episodes are re-run."""

import pytest

from memrl.agents import SamplingConfig
from memrl.recipes.schema import AgentCfg, EnvCfg, ResourcesCfg, RolloutCfg
from memrl.rl.rollout import RolloutManager

pytestmark = pytest.mark.slow


def test_killed_worker_is_restarted_and_the_batch_completes(tmp_path, tiny_dir, ray_local):
    marker = tmp_path / "worker-died"
    mgr = RolloutManager(str(tiny_dir), rollout=RolloutCfg(max_model_len=1024, rollout_timeout=600),
                         resources=ResourcesCfg(), faults=[{"die_after_turns": 1, "once_file": str(marker)}])
    try:
        trajs, stats = mgr.rollout(list(range(8)), list(range(8)), EnvCfg(id="memrl.testing:LettersEnv"),
                                   AgentCfg(name="memsearcher", memory_tokens=16), SamplingConfig(12, 1.0, seed=0))
    finally:
        mgr.shutdown()
    assert marker.exists()  # the worker process really died mid-rollout
    assert stats.restarts == 1
    assert len(trajs) == 8 and not any(t.failed for t in trajs)
    assert [t.group_id for t in trajs] == list(range(8))
    assert all(len(t.contexts) == 2 for t in trajs)


def _alive(pids):
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_shutdown_leaves_no_engine_process_behind(tiny_dir, ray_local):
    """Every engine process of every worker is gone after shutdown (an orphaned CPU engine keeps its KV
    cache, gigabytes, until someone kills it by hand)."""
    import time

    import psutil
    import ray

    mgr = RolloutManager(str(tiny_dir), rollout=RolloutCfg(max_model_len=512), resources=ResourcesCfg())
    actor_pids = ray.get([w.ready.remote() for w in mgr.workers])
    pids = [c.pid for p in actor_pids for c in psutil.Process(p).children(recursive=True)]
    assert pids
    mgr.shutdown()
    deadline = time.monotonic() + 60
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(pids) == []
