"""Curriculum over composed objectives: a distribution of N, or N that grows as the reward rises."""

from __future__ import annotations

from collections import Counter

import pytest

from memrl.recipes.schema import CurriculumCfg, RecipeError, load_recipe
from memrl.rl.curriculum import Curriculum


def test_mix_draws_every_n_with_its_weight_and_the_same_draws_for_the_same_step():
    cur = Curriculum(CurriculumCfg(objectives=[1, 2, 4], mode="mix", weights=[0.5, 0.25, 0.25]), seed=3)
    draws = Counter(n for step in range(200) for n in cur.objectives(step, 8))
    assert set(draws) == {1, 2, 4}
    assert 0.45 < draws[1] / 1600 < 0.55 and 0.2 < draws[4] / 1600 < 0.3
    assert cur.objectives(7, 8) == cur.objectives(7, 8) != cur.objectives(8, 8)  # seeded by the step
    assert not cur.observe({1: [1.0], 2: [1.0], 4: [1.0]}) and cur.unlocked == [1, 2, 4]


def test_grow_unlocks_the_next_n_when_the_top_ns_reward_holds_above_the_threshold():
    cur = Curriculum(CurriculumCfg(objectives=[1, 2, 3], mode="grow", promote_at=0.5, window=2), seed=0)
    assert set(cur.objectives(0, 16)) == {1}
    assert not cur.observe({1: [0.0, 1.0]})  # mean 0.5, but one step is not a window of 2
    assert cur.observe({1: [1.0, 0.5]})  # window mean (0.5 + 0.75) / 2 >= 0.5: N=2 joins
    assert cur.unlocked == [1, 2] and set(cur.objectives(5, 64)) == {1, 2}
    assert not cur.observe({1: [1.0], 2: [0.0]}) and not cur.observe({2: [0.9]})  # N=2 window mean 0.45
    assert cur.observe({2: [0.6]}) and cur.unlocked == [1, 2, 3]
    assert not cur.observe({3: [1.0]}) and cur.level == 3  # nothing left to unlock


def test_the_level_survives_a_resume():
    cfg = CurriculumCfg(objectives=[1, 2], mode="grow", promote_at=0.2, window=1)
    cur = Curriculum(cfg)
    cur.observe({1: [0.5]})
    again = Curriculum(cfg)
    again.load_state_dict(cur.state_dict())
    assert again.unlocked == [1, 2] and again.history == {1: [0.5]}


def test_bad_curriculum_recipes_are_refused_with_the_key():
    with pytest.raises(RecipeError, match="curriculum.weights"):
        load_recipe("quickstart", ["curriculum.objectives=[1,2]", "curriculum.mode=mix", "curriculum.weights=[1]"])
    with pytest.raises(RecipeError, match="curriculum.objectives"):
        load_recipe("quickstart", ["curriculum.objectives=[2,2]"])
    with pytest.raises(RecipeError, match="curriculum.weights"):
        load_recipe("quickstart", ["curriculum.objectives=[1,2]", "curriculum.mode=grow", "curriculum.weights=[1,1]"])
    assert load_recipe("quickstart").curriculum.objectives == []  # off by default: every task at env.objectives
