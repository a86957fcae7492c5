"""An env that raises, hangs or returns a non-string observation ends only its own episode."""

import pytest

from memrl.agents import HFBackend, SamplingConfig, backend_policy, make_agent, run_episodes
from memrl.models import load_model
from memrl.recipes.schema import AgentCfg
from memrl.testing import FaultyEnv


@pytest.fixture(scope="module")
def policy(tiny_dir, tiny_tokenizer):
    return backend_policy(HFBackend(load_model(tiny_dir), tiny_tokenizer))


@pytest.mark.parametrize("fault", ["raise", "hang", "non_string"])
def test_faulty_env_fails_only_its_episode(policy, tiny_tokenizer, fault):
    envs = [FaultyEnv(fault=fault, bad_seeds=(1,), hang_s=8.0) for _ in range(3)]
    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher"))
    trajs = run_episodes(agent, envs, [0, 1, 2], policy, SamplingConfig(max_tokens=8, temperature=1.0, seed=0),
                         env_timeout=3.0)  # generous: CI runs on 2 busy cores
    assert [t.failed for t in trajs] == [False, True, False]
    bad = trajs[1]
    assert bad.reward == 0.0 and bad.info["error"]
    assert {"raise": "exploded", "hang": "timed out", "non_string": "non-string"}[fault] in bad.info["error"]
    for good in (trajs[0], trajs[2]):
        assert good.info["turns"] == 2 and len(good.contexts) == 2 and good.info["terminated"]


def test_prompt_that_fills_the_context_window_ends_only_its_episode(vllm_tiny, tiny_tokenizer):
    """vLLM rejects a whole batch when one prompt is longer than max_model_len; the backend answers
    that prompt with an empty CONTEXT_FULL generation and the episode ends truncated with reward 0."""
    from memrl.agents.backends import CONTEXT_FULL

    long_prompt, short_prompt = [5] * vllm_tiny.max_model_len, [5] * 10
    gens = vllm_tiny.generate([short_prompt, long_prompt], SamplingConfig(max_tokens=4, temperature=0.0))
    assert gens[1].finish_reason == CONTEXT_FULL and gens[1].token_ids == []
    assert len(gens[0].token_ids) >= 1 and gens[0].finish_reason != CONTEXT_FULL
    # a prompt near the limit gets only the tokens that still fit
    near = vllm_tiny.generate([[5] * (vllm_tiny.max_model_len - 2)], SamplingConfig(max_tokens=8, temperature=0.0))
    assert 1 <= len(near[0].token_ids) <= 2

    from memrl.testing import LettersEnv

    base = backend_policy(vllm_tiny)

    def policy(prompts, episodes, cfg):  # episode 1 "overflows" on its second turn
        gens = base(prompts, episodes, cfg)
        return [g if not (e == 1 and len(p) > 40) else type(g)([], [], "", CONTEXT_FULL)
                for p, e, g in zip(prompts, episodes, gens, strict=True)]

    agent = make_agent(tiny_tokenizer, AgentCfg(name="full_context"))
    trajs = run_episodes(agent, [LettersEnv(turns=2) for _ in range(2)], [0, 1], policy,
                         SamplingConfig(max_tokens=8, temperature=1.0, seed=0))
    assert not trajs[1].failed and trajs[1].reward == 0.0 and trajs[1].info["context_full"]
    assert trajs[1].info["truncated"] and not trajs[1].info["terminated"]
    n = len(trajs[1].info["objectives"])  # scored like running out of turns: every objective unanswered
    assert n >= 1 and trajs[1].info["objective_em"] == [0.0] * n and trajs[1].info["objective_f1"] == [0.0] * n
    assert trajs[0].info["terminated"] and not trajs[0].info.get("context_full")


def test_a_tool_call_that_never_returns_does_not_hold_the_rollout(policy, tiny_tokenizer):
    import threading

    from memrl.testing import LettersEnv

    release, returned = threading.Event(), threading.Event()

    class StuckEnv(LettersEnv):
        def step(self, action):
            release.wait(120)  # a dead retrieval server with no client timeout
            returned.set()
            return super().step(action)

    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher"))
    trajs = run_episodes(agent, [StuckEnv()], [0], policy, SamplingConfig(max_tokens=4, temperature=1.0, seed=0), env_timeout=1.0)
    assert not returned.is_set()  # run_episodes came back while the env call was still blocked
    release.set()
    assert trajs[0].failed and "timed out" in trajs[0].info["error"]


def test_turns_cut_by_max_tokens_are_counted(tiny_tokenizer):
    """A generation that runs into max_tokens before any stop string (a memory that never closes: the repetition
    loop of a small model at large N) counts in `length_stops` and in the eval's `length_stop_rate`."""
    from memrl.agents.backends import Generation
    from memrl.agents.evaluate import episode_records, summarize
    from memrl.testing import LettersEnv

    texts = iter([("<memory>Q1: a. Q2: a. Q3: a. Q4:", "length"), ("<memory>a</memory><answer>b</answer>", "stop")])

    def scripted(prompts, episodes, cfg):
        out = []
        for _ in prompts:
            text, why = next(texts)
            ids = tiny_tokenizer.encode(text, add_special_tokens=False)
            out.append(Generation(ids, [0.0] * len(ids), text, why))
        return out

    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher"))
    [traj] = run_episodes(agent, [LettersEnv(turns=2)], [0], scripted, SamplingConfig(max_tokens=8, temperature=0.0))
    assert traj.info["turns"] == 2 and traj.info["length_stops"] == 1
    assert [t["finish_reason"] for t in traj.info["turn_log"]] == ["length", "stop"]
    assert summarize([traj])["length_stop_rate"] == 0.5 and episode_records([traj])[0]["length_stops"] == 1
