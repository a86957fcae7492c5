"""An env that raises, hangs or returns a non-string observation ends only its own episode."""

import pytest

from memrl.agents import HFBackend, SamplingConfig, backend_policy, make_agent, run_episodes
from memrl.models import load_model
from memrl.testing import FaultyEnv


@pytest.fixture(scope="module")
def policy(tiny_dir, tiny_tokenizer):
    return backend_policy(HFBackend(load_model(tiny_dir), tiny_tokenizer))


@pytest.mark.parametrize("fault", ["raise", "hang", "non_string"])
def test_faulty_env_fails_only_its_episode(policy, tiny_tokenizer, fault):
    envs = [FaultyEnv(fault=fault, bad_seeds=(1,), hang_s=5.0) for _ in range(3)]
    agent = make_agent("memsearcher", tiny_tokenizer)
    trajs = run_episodes(agent, envs, [0, 1, 2], policy, SamplingConfig(max_tokens=8, temperature=1.0, seed=0),
                         env_timeout=1.0)
    assert [t.failed for t in trajs] == [False, True, False]
    bad = trajs[1]
    assert bad.reward == 0.0 and bad.info["error"]
    assert {"raise": "exploded", "hang": "timed out", "non_string": "non-string"}[fault] in bad.info["error"]
    for good in (trajs[0], trajs[2]):
        assert good.info["turns"] == 2 and len(good.contexts) == 2 and good.info["terminated"]
