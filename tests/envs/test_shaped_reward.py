"""The training reward rule (`envs.rewards.shaped_reward`) on hand cases, MemSearcher's included."""

import pytest

from memrl.envs.rewards import shaped_reward

MEMSEARCHER = dict(score="f1", format_penalty=True, format_floor=0.1)


@pytest.mark.parametrize(("em", "f1", "malformed", "answered", "want"), [
    (0.0, 0.4, False, True, 0.4),  # F1 of the answer
    (1.0, 1.0, False, True, 1.0),
    (0.0, 0.0, False, True, 0.1),  # right format, wrong answer: the 0.1 floor
    (1.0, 1.0, True, True, 0.0),  # a malformed turn: 0 whatever the answer
    (0.0, 0.0, False, False, 0.0),  # never answered (out of turns): no floor
    (0.0, 0.0, True, False, 0.0),
])
def test_memsearchers_f1_reward_with_its_format_floor(em, f1, malformed, answered, want):
    assert shaped_reward(em, f1, malformed, answered, **MEMSEARCHER) == pytest.approx(want)


def test_default_rule_is_the_envs_em_untouched():
    # EM of a composed task (mean over objectives), even with an invalid action on the way (no penalty)
    assert shaped_reward(0.5, 0.7, True, False) == 0.5
    assert shaped_reward(0.0, 0.3, False, True) == 0.0  # no floor by default
    assert shaped_reward(2.0, 1.5, False, True, score="em", format_penalty=True) == 2.0  # MEM1: summed EM
    with pytest.raises(ValueError, match="score must be one of"):
        shaped_reward(1.0, 1.0, False, True, score="acc")
