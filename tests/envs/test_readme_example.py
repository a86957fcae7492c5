"""The README's "Define an environment" example runs as written and yields a working env."""

import re
from pathlib import Path

from gymnasium.utils.env_checker import check_env

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    section = README.read_text().split("## Define an environment", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_env_example_is_short_runs_and_composes(capsys):
    code = _example()
    assert len(code.strip().splitlines()) <= 40
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert "Answer all 3 questions" in capsys.readouterr().out
    env = scope["CapitalsEnv"]()
    check_env(env, skip_render_check=True)
    composed = scope["env"].unwrapped
    assert set(composed.tools()) == {"atlas", "search"}
    _, info = env.reset(seed=4)
    for step in env.oracle_steps():
        _, reward, terminated, _, info = env.step(step.action)
    assert terminated and reward == 1.0 and info["format_reward"] == 1.0
    held_out = scope["CapitalsEnv"](split="eval")
    asked = {held_out.reset(seed=s)[1]["answers"][0][0] for s in range(20)}
    trained = {env.reset(seed=s)[1]["answers"][0][0] for s in range(20)}
    assert asked == {"Nairobi", "Santiago"} and not asked & trained
