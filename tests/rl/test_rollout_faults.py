"""A rollout worker killed mid-batch is restarted by Ray and its episodes are re-run."""

import pytest

from memrl.agents import SamplingConfig
from memrl.rl.rollout import AgentSpec, EnvSpec, RolloutManager

pytestmark = pytest.mark.slow


def test_killed_worker_is_restarted_and_the_batch_completes(tmp_path, tiny_dir, ray_local):
    marker = tmp_path / "worker-died"
    mgr = RolloutManager(str(tiny_dir), workers=1, engine_kwargs={"max_model_len": 1024},
                         faults=[{"die_after_turns": 1, "once_file": str(marker)}], timeout=600)
    try:
        trajs, stats = mgr.rollout(list(range(8)), list(range(8)), EnvSpec("memrl.testing:LettersEnv"),
                                   AgentSpec("memsearcher", memory_tokens=16), SamplingConfig(12, 1.0, seed=0))
    finally:
        mgr.shutdown()
    assert marker.exists()  # the worker process really died mid-rollout
    assert stats.restarts == 1
    assert len(trajs) == 8 and not any(t.failed for t in trajs)
    assert [t.group_id for t in trajs] == list(range(8))
    assert all(len(t.contexts) == 2 for t in trajs)
