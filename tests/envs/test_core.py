"""The text-env API: Gymnasium semantics, invalid actions, composition with hand-computed scores."""

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from memrl.envs import ComposedEnv, Task, TaskEnv, compose, list_envs, make, normalize_answer
from memrl.envs.arith import ArithEnv, safe_eval
from memrl.envs.rewards import exact_match, f1_score, split_answers


class Capitals(TaskEnv):
    """A fixed-question env whose lookups are counted (to check composed tool routing)."""

    default_max_turns = 3
    calls = 0

    def sample_task(self, rng):
        country = ["France", "Japan", "Peru"][int(rng.integers(3))]
        return Task(f"What is the capital of {country}?", [{"France": "Paris", "Japan": "Tokyo", "Peru": "Lima"}[country]])

    def tool_lookup(self, query: str) -> str:
        """look a country up"""
        Capitals.calls += 1
        return f"{query}: see atlas"

    def backend_of(self, name):
        return "atlas"  # every instance shares one backend


def test_answer_normalization_and_scores_match_the_qa_literature():
    assert normalize_answer("  The  Eiffel-Tower! ") == "eiffeltower"
    assert exact_match("an apple", ["Apple"]) == 1.0
    assert exact_match("apples", ["apple"]) == 0.0
    assert f1_score("Paris France", ["Paris"]) == pytest.approx(2 / 3)  # P=1/2, R=1
    assert f1_score("", ["Paris"]) == 0.0
    assert split_answers("a; b", 3) == ["a", "b", ""]
    assert split_answers("a;b;c;d", 2) == ["a", "b"]


@pytest.mark.parametrize("env_id,kwargs", [
    ("memrl/Arith-v0", {}),
    ("memrl/KBQA-v0", {"min_hops": 1, "max_hops": 3}),
    ("memrl/Composed-v0", {"base": "memrl/Arith-v0", "n": 3}),
])
def test_registered_envs_pass_gymnasiums_checker(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    assert env_id in dict(list_envs())


def test_same_seed_same_task_and_different_seeds_differ():
    env = make("memrl/Arith-v0")
    q1, _ = env.reset(seed=5)
    q2, _ = env.reset(seed=5)
    q3, _ = env.reset(seed=6)
    assert q1 == q2 != q3


def test_answer_terminates_and_running_out_of_turns_truncates():
    env = ArithEnv(max_turns=2)
    _, info = env.reset(seed=0)
    assert info["tools"] == {"calc": "evaluate an integer expression with + - *"} and info["max_turns"] == 2
    gold = info["answers"][0][0]
    obs, r, term, trunc, info = env.step(f"I think <answer> {gold} </answer>")
    assert (r, term, trunc, info["em"], info["format_reward"]) == (1.0, True, False, 1.0, 1.0)
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step("<calc>2*3</calc>")
    assert obs == "<information>6</information>\n[HINT] 1 turn left." and not (term or trunc)
    obs, r, term, trunc, info = env.step("<calc>1+1</calc>")
    assert (r, term, trunc, info["em"], info["objective_em"]) == (0.0, False, True, 0.0, [0.0])
    with pytest.raises(RuntimeError, match="reset"):
        env.step("<answer>1</answer>")


def test_invalid_action_explains_itself_consumes_a_turn_and_zeroes_the_format_reward():
    env = ArithEnv(max_turns=3)
    _, info = env.reset(seed=1)
    obs, r, term, trunc, info = env.step("the answer is probably 12")
    assert "Invalid action" in obs and "<calc>" in obs and info["invalid_action"] and info["turn"] == 1
    _, r, term, _, info = env.step(f"<answer>{env.task.answers[0]}</answer>")
    assert term and r == 1.0 and info["format_reward"] == 0.0
    env.reset(seed=1)
    assert env.step("<answer></answer>")[4]["invalid_action"]  # an empty answer is not an answer


def test_composed_scores_each_objective_and_aggregates_by_hand():
    env = compose([ArithEnv() for _ in range(3)])
    obs, info = env.reset(seed=3)
    golds = [a[0] for a in info["answers"]]
    assert obs.startswith("Answer all 3 questions") and all(f"{i + 1}. " in obs for i in range(3))
    assert info["max_turns"] == 9 and len(set(info["objectives"])) == 3
    _, r, term, _, info = env.step(f"<answer>{golds[0]}; 0 ;{golds[2]}</answer>")
    assert term and info["objective_em"] == [1.0, 0.0, 1.0] and r == pytest.approx(2 / 3)
    summed = compose([ArithEnv() for _ in range(3)], aggregate="sum")
    summed.reset(seed=3)
    assert summed.step(f"<answer>{golds[0]}; 0; {golds[2]}</answer>")[1] == 2.0


def test_composed_sub_tasks_are_reproducible_and_distinct():
    a, b = compose([ArithEnv(), ArithEnv()]), compose([ArithEnv(), ArithEnv()])
    assert a.reset(seed=11)[0] == b.reset(seed=11)[0]
    assert a.parts[0].task != a.parts[1].task


def test_heterogeneous_composition_offers_every_tool_and_shares_backends():
    env = make("memrl/Composed-v0", env_ids=["memrl/Arith-v0", "memrl/KBQA-v0"], max_turns=5).unwrapped
    _, info = env.reset(seed=0)
    assert set(info["tools"]) == {"calc", "search"} and info["max_turns"] == 5
    shared = ComposedEnv([Capitals(), Capitals(), Capitals()])
    shared.reset(seed=0)
    Capitals.calls = 0
    obs = shared.step("<lookup>Peru</lookup>")[0]
    assert Capitals.calls == 1 and obs.count("see atlas") == 1


def test_composed_oracle_answers_everything_and_keeps_earlier_findings_in_its_notes():
    env = compose([ArithEnv() for _ in range(4)])
    env.reset(seed=7)
    steps = env.oracle_steps()
    assert len(steps) == 5 and steps[-1].note.count("=") == 4
    assert steps[2].note.startswith("Q1: ") and "Q2: " in steps[2].note and "Q3: Need" in steps[2].note
    for step in steps:
        out = env.step(step.action)
    assert out[2] and out[1] == 1.0 and out[4]["objective_em"] == [1.0] * 4


def test_unknown_ids_and_bad_composition_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="registered memrl envs: .*memrl/KBQA-v0"):
        make("memrl/KBQA-v9")
    with pytest.raises(ValueError, match="env_ids"):
        make("memrl/Composed-v0")
    with pytest.raises(ValueError, match="aggregate"):
        compose([ArithEnv()], aggregate="max")
    with pytest.raises(ValueError, match="min_hops"):
        make("memrl/KBQA-v0", min_hops=3, max_hops=2)


def test_calculator_refuses_anything_but_integer_arithmetic():
    assert safe_eval("12 * -3 + 4") == -32
    for bad in ["__import__('os')", "2**99999", "1/0", "x + 1", "", "9" * 20]:
        with pytest.raises(ValueError):
            safe_eval(bad)


def test_composition_scales_to_sixteen_objectives():
    env = compose([ArithEnv() for _ in range(16)])
    _, info = env.reset(seed=2)
    answer = "; ".join(a[0] for a in info["answers"])
    assert env.step(f"<answer>{answer}</answer>")[4]["objective_em"] == [1.0] * 16
