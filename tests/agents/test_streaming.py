"""Continuous batching of episodes: a slow env step of one episode never holds up the others."""

import threading

import pytest

from memrl.agents import SamplingConfig, backend_policy, make_agent, run_episodes, streaming_policy
from memrl.recipes.schema import AgentCfg
from memrl.testing import FaultyEnv, LettersEnv


class GateEnv(LettersEnv):
    """Episode 0's first step waits until every other episode has finished (or gives up after 30 s)."""

    def __init__(self, gate: threading.Event, finished: list, others: int, slow: bool) -> None:
        super().__init__(turns=2)
        self.gate, self.finished, self.others, self.slow = gate, finished, others, slow
        self.saw_others_done: bool | None = None

    def step(self, action):
        if self.slow and self.saw_others_done is None:
            self.saw_others_done = self.gate.wait(timeout=30)
        out = super().step(action)
        if not self.slow and out[2]:
            self.finished.append(1)
            if len(self.finished) == self.others:
                self.gate.set()
        return out


def _gated(n: int):
    gate, finished = threading.Event(), []
    return [GateEnv(gate, finished, n - 1, slow=i == 0) for i in range(n)]


def test_streaming_episodes_overtake_a_blocked_one(vllm_tiny, tiny_tokenizer):
    envs = _gated(4)
    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher"))
    trajs = run_episodes(agent, envs, range(4), streaming_policy(vllm_tiny), SamplingConfig(max_tokens=6, temperature=1.0),
                         env_timeout=60)
    assert envs[0].saw_others_done is True  # the other three finished both turns while episode 0 waited
    assert all(t.info["terminated"] and t.info["turns"] == 2 for t in trajs)
    assert max(t.info["episode_seconds"] for t in trajs[1:]) <= trajs[0].info["episode_seconds"]


def test_turn_synchronous_schedule_waits_for_the_slowest_env(tiny_tokenizer):
    """The contrast: with a batch policy every episode waits for episode 0's step each turn."""
    from memrl.agents import Generation

    envs = _gated(3)
    for e in envs:
        e.gate.wait = lambda timeout=None, g=e.gate: threading.Event.wait(g, timeout=0.5)
    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher"))
    ids = agent.encode("<memory>m</memory><answer>x</answer>")
    policy = lambda prompts, eps, cfg: [Generation(ids, [0.0] * len(ids), "<memory>m</memory><answer>x</answer>",  # noqa: E731
                                                   "stop") for _ in prompts]
    run_episodes(agent, envs, range(3), policy, SamplingConfig(max_tokens=6, temperature=1.0), env_timeout=60)
    assert envs[0].saw_others_done is False


def test_streaming_and_batch_schedules_agree_on_greedy_episodes(vllm_tiny, tiny_tokenizer):
    agent = make_agent(tiny_tokenizer, AgentCfg(name="mem1"))
    cfg = SamplingConfig(max_tokens=8, temperature=0.0)
    runs = [run_episodes(agent, [LettersEnv(turns=3) for _ in range(5)], range(5), policy, cfg)
            for policy in (streaming_policy(vllm_tiny), backend_policy(vllm_tiny))]
    for a, b in zip(*runs, strict=True):
        assert [c.token_ids for c in a.contexts] == [c.token_ids for c in b.contexts]
        assert a.reward == pytest.approx(b.reward)


@pytest.mark.parametrize("fault", ["raise", "hang", "non_string"])
def test_streaming_faulty_env_fails_only_its_episode(vllm_tiny, tiny_tokenizer, fault):
    envs = [FaultyEnv(fault=fault, bad_seeds=(1,), hang_s=8.0) for _ in range(3)]
    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher"))
    trajs = run_episodes(agent, envs, [0, 1, 2], streaming_policy(vllm_tiny), SamplingConfig(max_tokens=8, temperature=1.0),
                         env_timeout=3.0)  # generous: CI runs on 2 busy cores
    assert [t.failed for t in trajs] == [False, True, False]
    assert {"raise": "exploded", "hang": "timed out", "non_string": "non-string"}[fault] in trajs[1].info["error"]
    assert vllm_tiny.in_flight() == 0


def test_streamed_prompts_reach_the_engine_rendered(vllm_tiny):
    """add_request gets the prompt as LLM.generate renders it, not the raw form vLLM 0.32 deprecates."""
    ids = [5, 6, 7]
    rendered = vllm_tiny._engine_input(ids)
    assert "type" in rendered  # vLLM's InputProcessor takes its deprecated raw-prompt path without this key
    assert list(rendered["prompt_token_ids"]) == ids
