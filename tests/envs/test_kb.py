"""The generated multi-hop knowledge base: deterministic worlds, answerable questions, a perfect oracle."""

import numpy as np
import pytest

from memrl.envs import compose, make
from memrl.envs.kb import KBQAEnv, build_world, phrase, sample_chain


def test_world_is_a_pure_function_of_its_seed():
    a, b, c = build_world(1), build_world(1, people=120), build_world(2)
    assert a.corpus == b.corpus and a.corpus != c.corpus
    assert len({p["title"] for p in a.corpus}) == len(a.corpus) == 120 + 30 + 8 + 24
    capital = a.facts[(a.names["country"][0], "capital")]
    assert a.facts[(capital, "country")] == a.names["country"][0]  # a capital lies in its own country


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_chains_never_revisit_an_entity_and_every_hop_is_stated_in_a_passage(hops):
    world = build_world(0)
    passages = {p["title"]: p["text"] for p in world.corpus}
    rng = np.random.default_rng(hops)
    for _ in range(50):
        entities, rels = sample_chain(world, rng, hops)
        assert len(set(entities)) == hops + 1 and len(rels) == hops
        for subj, obj in zip(entities, entities[1:], strict=False):
            assert obj in passages[subj]
    assert phrase("Ana", ["born_in", "country"]) == "the country of the birthplace of Ana"


@pytest.mark.parametrize("min_hops,max_hops", [(1, 1), (2, 2), (1, 4)])
def test_oracle_solves_every_task_with_one_search_per_hop(min_hops, max_hops):
    env = make("memrl/KBQA-v0", min_hops=min_hops, max_hops=max_hops)
    hops_seen = set()
    for seed in range(40):
        _, info = env.reset(seed=seed)
        steps = env.unwrapped.oracle_steps()
        hops = env.unwrapped.task.meta["hops"]
        hops_seen.add(hops)
        assert len(steps) == hops + 1 and min_hops <= hops <= max_hops
        for step in steps:
            obs, reward, terminated, truncated, info = env.step(step.action)
            if not terminated:  # every search finds the passage of the entity it names, ranked first
                assert obs.startswith(f"<information>Doc 1 (Title: {step.action[8:-9]})")
        assert terminated and not truncated and reward == 1.0 and info["format_reward"] == 1.0
    assert hops_seen == set(range(min_hops, max_hops + 1))


def test_composed_kb_oracle_and_one_search_call_per_turn():
    env = compose([KBQAEnv(min_hops=2, max_hops=2) for _ in range(4)])
    _, info = env.reset(seed=9)
    assert info["max_turns"] == 16 and len(info["objectives"]) == 4
    steps = env.oracle_steps()
    assert len(steps) == 4 * 2 + 1
    obs = env.step(steps[0].action)[0]
    assert obs.count("Doc 1 ") == 1  # four parts, one shared index: one result list
    for step in steps[1:]:
        out = env.step(step.action)
    assert out[1] == 1.0 and out[4]["objective_em"] == [1.0] * 4


def test_wrong_and_partial_answers_score_as_expected():
    env = KBQAEnv(min_hops=1, max_hops=1)
    _, info = env.reset(seed=3)
    gold = info["answers"][0][0]
    assert env.step(f"<answer>the {gold.lower()}.</answer>")[1] == 1.0  # normalized EM
    env.reset(seed=3)
    _, reward, _, _, info = env.step(f"<answer>{gold} Extra</answer>")
    assert reward == 0.0 and 0.0 < info["f1"] < 1.0


def test_difficulty_knobs_are_validated():
    with pytest.raises(ValueError, match="max_hops"):
        KBQAEnv(min_hops=1, max_hops=5)
    with pytest.raises(ValueError, match="topk"):
        KBQAEnv(topk=0)
    assert KBQAEnv(max_hops=3).max_turns == 5


def test_a_random_text_policy_scores_near_zero():
    rng = np.random.default_rng(0)
    env = make("memrl/KBQA-v0", min_hops=1, max_hops=2)
    vocab = [p["title"] for p in build_world(0).corpus] + ["<search>", "</search>", "<answer>", "</answer>", "the"]
    total = 0.0
    for seed in range(100):
        env.reset(seed=seed)
        done = False
        while not done:
            action = " ".join(str(w) for w in rng.choice(vocab, size=int(rng.integers(1, 6))))
            _, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        total += reward
    assert total / 100 < 0.05
