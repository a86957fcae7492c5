"""Where a multi-hop episode lost its facts (`agents.audit`): each outcome on a hand-written episode, and real
oracle episodes (2-hop, composed) that answer everything, record the chains and, with a policy that forgets,
lose the bridge entity the way it was lost."""

from __future__ import annotations

import pytest

from memrl.agents import SamplingConfig, make_agent, oracle_policy, run_episodes
from memrl.agents.audit import hop_counts, lost_hops, objective_outcomes, outcome_counts
from memrl.agents.evaluate import episode_records
from memrl.envs import build as build_env
from memrl.recipes.schema import AgentCfg, EnvCfg

CHAIN = ["Ana Lim", "Bo Tan", "Velmora"]  # question names Ana Lim; the first search finds Bo Tan, the second Velmora


def turn(obs=None, memory=None, kept=None):
    return {"observation": obs, "memory": memory, "memory_kept": memory if kept is None else kept}


def outcome(turns, solved=0.0, **kw):
    return objective_outcomes(turns, [CHAIN], [solved], **kw)[0]


def test_each_stage_of_a_lost_fact_by_hand():
    found_bo = "<information>The mentor of Ana Lim is Bo Tan.</information>"
    found_velmora = "<information>Bo Tan was born in Velmora.</information>"
    assert outcome([turn(found_bo, "x"), turn(found_velmora, "bo tan"), turn("Episode over.", "Bo Tan, Velmora")],
                   solved=1.0) == "answered"
    assert outcome([turn("<information>No results.</information>", ""), turn("Episode over.", "")]) == "not found"
    assert outcome([turn("", ""), turn(found_bo, "")]) == "out of turns"  # seen on the last turn
    assert outcome([turn(found_bo, ""), turn("", "Ana Lim"), turn("", "")]) == "not written"
    assert outcome([turn(found_bo, ""), turn("", "long ... Bo Tan", kept="long ..."), turn("", "")]) == "truncated"
    assert outcome([turn(found_bo, ""), turn("", "Bo Tan"), turn("", "something else")]) == "overwritten"
    full = [turn(found_bo, "Bo Tan"), turn(found_velmora, "Bo Tan"), turn("Episode over.", "Bo Tan; Velmora")]
    assert outcome(full) == "not answered"
    assert outcome(full, context_full=True) == "context full"
    # the full-context agent keeps no memory: a fact it has seen in its context counts as kept
    assert outcome([{"observation": found_bo}, {"observation": found_velmora}, {"observation": "Episode over."}]) \
        == "not answered"
    assert objective_outcomes([turn()], [None], [0.0]) == [None]  # no chain known: no outcome
    assert outcome_counts([{"facts": ["answered", "not found", None]}, {"facts": ["not found"]}, {}]) == {
        **dict.fromkeys(("out of turns", "not written", "truncated", "overwritten", "context full",
                         "not answered"), 0), "answered": 1, "not found": 2}


def test_the_hop_of_the_lost_fact_tells_the_dependent_search_from_the_first():
    found_bo = "<information>The mentor of Ana Lim is Bo Tan.</information>"
    miss = "<information>No results.</information>"
    # hop 1 never found; hop 1 found and kept but the search for Bo Tan never made (hop 2); hop 1 found, not written
    episodes = [[turn(miss, ""), turn(miss, ""), turn("", "")],
                [turn(found_bo, ""), turn(miss, "Bo Tan"), turn("", "Bo Tan")],
                [turn(found_bo, ""), turn(miss, "Ana Lim"), turn("", "")]]
    assert [outcome(e) for e in episodes] == ["not found", "not found", "not written"]
    assert [lost_hops(e, [CHAIN], [0.0])[0] for e in episodes] == [1, 2, 1]
    answered = [turn(found_bo, "Bo Tan"), turn("<information>Bo Tan was born in Velmora.</information>", "Bo Tan"),
                turn("", "Bo Tan, Velmora")]
    assert lost_hops(answered, [CHAIN], [1.0]) == [None] and lost_hops(answered, [CHAIN], [0.0]) == [None]
    assert lost_hops([turn()], [None], [0.0]) == [None]
    records = [{"facts": ["not found", "not written"], "lost_hops": [1, 1]}, {"facts": ["not found"], "lost_hops": [2]},
               {"facts": ["answered"], "lost_hops": [None]}, {"facts": ["not found"]}]  # the last: recorded before
    assert hop_counts(records) == {"not found": {1: 1, 2: 1}, "not written": {1: 1}}


ENV = EnvCfg(kwargs={"min_hops": 2, "max_hops": 2, "topk": 1, "max_turns": 4}, objectives=2)


@pytest.mark.parametrize("name", ["memsearcher", "mem1", "full_context"])
def test_oracle_episodes_record_their_chains_and_answer_every_objective(tiny_tokenizer, name):
    agent = make_agent(tiny_tokenizer, AgentCfg(name=name, max_observation_tokens=128, memory_tokens=128))
    envs = [build_env(ENV) for _ in range(3)]
    trajs = run_episodes(agent, envs, [5, 6, 7], oracle_policy(agent, envs), SamplingConfig(10**6, 0.0))
    records = episode_records(trajs)
    for r in records:
        assert len(r["chains"]) == 2 and all(len(c) == 3 for c in r["chains"])
        assert r["facts"] == ["answered", "answered"] and r["lost_hops"] == [None, None]
    memory = name != "full_context"
    assert all(("memory_kept" in t) == memory for tr in trajs for t in tr.info["turn_log"])


def _oracle_turns(tiny_tokenizer, memory_tokens: int):
    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher", max_observation_tokens=128,
                                                memory_tokens=memory_tokens))
    envs = [build_env(ENV)]
    trajs = run_episodes(agent, envs, [5], oracle_policy(agent, envs), SamplingConfig(10**6, 0.0))
    return trajs[0].info["turn_log"], trajs[0].info["chains"]


def test_a_memory_that_drops_the_bridges_at_the_end_is_counted_as_overwritten(tiny_tokenizer):
    """Real oracle turns of a 2-objective episode, then the last turn's memory blanked: both bridges were written
    and kept, and are gone from the memory the episode ended with."""
    turns, chains = _oracle_turns(tiny_tokenizer, memory_tokens=4096)
    assert len(turns) == 5  # two searches per objective, one answer
    assert objective_outcomes(turns, chains, [0.0, 0.0]) == ["not answered", "not answered"]  # found and kept
    blank = [*turns[:-1], {**turns[-1], "memory": "", "memory_kept": ""}]
    assert objective_outcomes(blank, chains, [0.0, 0.0]) == ["overwritten", "overwritten"]


def test_a_memory_budget_too_small_for_the_gold_notes_is_counted_as_truncated(tiny_tokenizer):
    """The agent really cuts the oracle's notes to 24 tokens: the second objective's bridge, written after the
    first objective's facts, never survives the cut."""
    turns, chains = _oracle_turns(tiny_tokenizer, memory_tokens=24)
    assert any(t["memory"] != t["memory_kept"] for t in turns)
    assert "truncated" in objective_outcomes(turns, chains, [0.0, 0.0])
