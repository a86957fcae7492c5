"""Per-request sampling seeds: a sampled episode repeats whatever else the engine batches beside it."""

import os
import subprocess
import sys

import pytest

from memrl.agents import (
    HFBackend,
    SamplingConfig,
    backend_policy,
    make_agent,
    run_episodes,
    sampling_seed,
    streaming_policy,
)
from memrl.models import load_model
from memrl.recipes.schema import AgentCfg
from memrl.testing import LettersEnv

CFG = SamplingConfig(max_tokens=8, temperature=1.0)


def _tokens(trajs) -> list[list[list[int]]]:
    return [[c.token_ids for c in t.contexts] for t in trajs]


def _play(agent, policy, env_seeds, sample_seeds=None):
    envs = [LettersEnv(turns=3) for _ in env_seeds]
    return run_episodes(agent, envs, env_seeds, policy, CFG, sample_seeds=sample_seeds)


# numpy's SeedSequence([0, 3, 5]).generate_state(1)[0] and SeedSequence([101, 0]) (an episode's first turn),
# recorded once: a change of the mixing would silently change every seeded rollout of a recipe
KNOWN = {(0, 3, 5): 2975998657, (101, 0): 4137311287}


def test_sampling_seed_is_a_fixed_mix_of_its_keys():
    for keys, seed in KNOWN.items():
        assert sampling_seed(*keys) == seed
    for i in range(3):  # changing any one key changes the seed
        other = [0, 3, 5]
        other[i] += 1
        assert sampling_seed(*other) != KNOWN[(0, 3, 5)]
    seeds = {sampling_seed(run, step, i) for run in range(3) for step in range(4) for i in range(16)}
    assert len(seeds) == 3 * 4 * 16  # no collisions between runs, steps or episodes
    assert sampling_seed(1, 2) != sampling_seed(2, 1)
    assert all(0 <= s < 2**32 for s in seeds)


def test_sampling_seed_is_the_same_in_another_process():
    """Rollout workers are other processes (Ray actors): the seed must not depend on per-process state such
    as Python's salted hash."""
    code = "from memrl.agents import sampling_seed; print(sampling_seed(0, 3, 5), sampling_seed(101, 0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.split() == [str(KNOWN[(0, 3, 5)]), str(KNOWN[(101, 0)])]


def test_seeded_vllm_episodes_repeat_alone_or_in_a_bigger_batch(vllm_tiny, tiny_tokenizer):
    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher"))
    policy = streaming_policy(vllm_tiny)
    alone = _play(agent, policy, [0, 1, 0], [101, 102, 103])
    # the same three episodes last in a batch of six, after three others that change the batch and its timing
    crowded = _play(agent, policy, [7, 8, 9, 0, 1, 0], [201, 202, 203, 101, 102, 103])
    assert _tokens(crowded[3:]) == _tokens(alone)
    for a, b in zip(alone, crowded[3:], strict=True):
        # the same samples; their log-probs agree to float error (vLLM CPU's kernels depend on how many requests a
        # decode step batches, which timing decides: exact equality held on an idle machine, not under load)
        for ca, cb in zip(a.contexts, b.contexts, strict=True):
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-4)
    assert _tokens(alone[:1]) != _tokens(alone[2:])  # same task, another sample seed: another sample


def test_without_sample_seeds_the_engine_stream_moves_on(vllm_tiny, tiny_tokenizer):
    """Where the nondeterminism entered before: one engine-wide generator, so a repeat samples anew."""
    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher"))
    policy = streaming_policy(vllm_tiny)
    assert _tokens(_play(agent, policy, [0, 1, 2])) != _tokens(_play(agent, policy, [0, 1, 2]))


def test_seeded_batch_policy_episodes_repeat(tiny_dir, tiny_tokenizer):
    """The turn-synchronous schedule keeps each prompt's own seed (one policy call per sampling config)."""
    agent = make_agent(tiny_tokenizer, AgentCfg(name="mem1"))
    policy = backend_policy(HFBackend(load_model(tiny_dir), tiny_tokenizer))
    alone = _play(agent, policy, [0, 1], [5, 6])
    crowded = _play(agent, policy, [4, 0, 1], [9, 5, 6])
    assert _tokens(crowded[1:]) == _tokens(alone)
