"""Memory agents keep a bounded context for any number of turns; full context grows with the turns."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memrl.agents import Generation, make_agent
from memrl.recipes.schema import AgentCfg

INFO = {"tools": {"search": "search the corpus"}}
MAX_TOKENS, MAX_OBS, MEMORY = 40, 60, 24


def _play(agent, turns: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    state = agent.start("Q: where was Ana Lim born?", INFO)
    sizes = []
    for _ in range(turns):
        prompt = agent.context_ids(state)
        n = rng.randint(1, MAX_TOKENS)
        memory = "m" * rng.randint(0, 200)
        text = f"<IS>{memory}</IS><memory>{memory}</memory><search>q{rng.random()}</search>"
        ids = agent.encode(text)[:n]
        gen = Generation(ids, [-1.0] * len(ids), agent.tokenizer.decode(ids), "stop")
        parsed = agent.parse(gen.text, state)
        obs = "<information>" + "passage " * rng.randint(0, 100) + "</information>"
        agent.update(state, prompt, gen, parsed, obs)
        sizes.append(len(prompt) + len(ids))
    assert state.stats.context_tokens == sizes
    return sizes


@pytest.mark.parametrize("name", ["mem1", "memsearcher"])
@settings(max_examples=25, deadline=None)
@given(turns=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_memory_agent_context_stays_bounded(tiny_tokenizer, name, turns, seed):
    agent = make_agent(tiny_tokenizer, AgentCfg(name=name, max_observation_tokens=MAX_OBS, memory_tokens=MEMORY))
    first = len(agent.context_ids(agent.start("Q: where was Ana Lim born?", INFO)))
    # prompt + (previous completion or memory) + observation + new completion, whatever the turn count
    bound = first + 2 * MAX_TOKENS + MAX_OBS + 2 * MEMORY + 40
    assert max(_play(agent, turns, seed)) <= bound


def test_full_context_grows_with_the_turns(tiny_tokenizer):
    agent = make_agent(tiny_tokenizer, AgentCfg(name="full_context", max_observation_tokens=MAX_OBS))
    sizes = _play(agent, 12, seed=1)
    assert all(b > a for a, b in zip(sizes, sizes[1:], strict=False))
    assert sizes[-1] > 5 * sizes[0] / 2


def test_full_context_trajectory_is_one_context_with_only_sampled_tokens_in_the_loss(tiny_tokenizer):
    agent = make_agent(tiny_tokenizer, AgentCfg(name="full_context", max_observation_tokens=MAX_OBS))
    state = agent.start("Q?", INFO)
    sampled = []
    for t in range(3):
        prompt = agent.context_ids(state)
        ids = agent.encode(f"<search>q{t}</search>")
        sampled += ids
        gen = Generation(ids, [-0.5] * len(ids), agent.tokenizer.decode(ids), "stop")
        agent.update(state, prompt, gen, agent.parse(gen.text, state), "<information>x</information>")
    (ctx,) = state.contexts
    assert [i for i, m in zip(ctx.token_ids, ctx.loss_mask, strict=True) if m] == sampled
    assert all(lp == -0.5 for lp, m in zip(ctx.logprobs, ctx.loss_mask, strict=True) if m)


def test_memory_agents_write_one_context_per_turn_and_reuse_sampled_ids(tiny_tokenizer):
    agent = make_agent(tiny_tokenizer, AgentCfg(name="mem1"))
    state = agent.start("Q?", INFO)
    gens = []
    for t in range(3):
        prompt = agent.context_ids(state)
        ids = agent.encode(f"<IS>k{t}</IS><search>q{t}</search>")
        gen = Generation(ids, [-0.1] * len(ids), agent.tokenizer.decode(ids), "stop")
        gens.append(ids)
        agent.update(state, prompt, gen, agent.parse(gen.text, state), f"<information>o{t}</information>")
    assert len(state.contexts) == 3
    # turn 2's prompt holds turn 1's sampled ids verbatim (token in, token out), masked out
    ctx = state.contexts[2]
    prompt_part = ctx.token_ids[: len(ctx.token_ids) - len(gens[2])]
    joined = ",".join(map(str, prompt_part))
    assert ",".join(map(str, gens[1])) in joined and ",".join(map(str, gens[0])) not in joined
    assert sum(ctx.loss_mask) == len(gens[2])
