"""The memory viewer: episodes become per-turn views (context as the model saw it, memory, action, reply,
reward, tokens) and a static page that a real headless browser renders with every episode on it."""

from __future__ import annotations

import pytest

from memrl.agents import SamplingConfig, make_agent, oracle_policy, run_episodes
from memrl.envs import build as build_env
from memrl.recipes.schema import AgentCfg, EnvCfg
from memrl.rl.viewer import Viewer, episode_view, render

ENV = EnvCfg(kwargs={"min_hops": 1, "max_hops": 1, "topk": 2, "max_turns": 2}, objectives=2)


@pytest.fixture(scope="module")
def episodes(tiny_tokenizer):
    """Oracle episodes of the memory agent and the full-context agent (gold memory notes, real env replies)."""
    out = {}
    for name in ("memsearcher", "full_context"):
        agent = make_agent(tiny_tokenizer, AgentCfg(name=name, max_observation_tokens=64, memory_tokens=64))
        envs = [build_env(ENV) for _ in range(2)]
        out[name] = run_episodes(agent, envs, [3, 4], oracle_policy(agent, envs), SamplingConfig(10**6, 0.0))
    return out


def test_a_memory_agents_turns_show_the_context_it_saw_its_memory_action_reply_and_reward(episodes, tiny_tokenizer):
    traj = episodes["memsearcher"][0]
    view = episode_view(traj, tiny_tokenizer)
    assert len(view["turns"]) == len(traj.contexts) == traj.info["turns"] >= 3  # search, search, answer
    assert view["em"] == 1.0 and len(view["questions"]) == 2
    for t, ctx in zip(view["turns"], traj.contexts, strict=True):
        prompt_len = len(ctx) - ctx.num_generated
        assert t["context"] == tiny_tokenizer.decode(ctx.token_ids[:prompt_len])  # exactly what the model was given
        assert t["context_tokens"] == len(ctx)
    first, second, last = view["turns"][0], view["turns"][1], view["turns"][-1]
    assert first["action"].startswith("<search>") and "<information>" in first["observation"]
    assert first["memory"] and first["memory"] in second["context"]  # the memory it wrote is what it read next
    assert last["action"].startswith("<answer>") and last["reward"] == 1.0 and last["observation"] == "Episode over."


def test_the_full_context_agent_sees_its_growing_context(episodes, tiny_tokenizer):
    view = episode_view(episodes["full_context"][0], tiny_tokenizer)
    sizes = [t["context_tokens"] for t in view["turns"]]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    assert view["turns"][0]["context"] in view["turns"][-1]["context"]  # every turn's context holds the first


def test_text_written_by_the_model_is_escaped():
    page = render("run", {"p": [{"questions": ["q"], "answers": [["a"]], "reward": 0.0, "em": 0.0, "failed": False,
                                 "error": None, "turns": [{"turn": 1, "context": "<script>x</script>",
                                                           "context_tokens": 5, "completion": "<b>", "memory": "</pre>",
                                                           "action": None, "observation": None, "reward": 0.0}]}]})
    assert "<script>x" not in page and "&lt;script&gt;" in page and "&lt;/pre&gt;" in page
    assert "malformed (no valid action)" in page and "none written" not in page  # memory "</pre>" was written
    page = render("run", {"p": [{"questions": [], "answers": [], "reward": 0.0, "em": 0.0, "failed": False,
                                 "error": None, "turns": [{"turn": 1, "context": "", "context_tokens": 1,
                                                           "completion": "", "memory": None, "action": "<answer>x</answer>",
                                                           "observation": "Episode over.", "reward": 0.0}]}]})
    assert "none written (no memory block)" in page and "&lt;answer&gt;x&lt;/answer&gt;" in page


def test_the_page_renders_in_a_headless_browser_with_every_episode(episodes, tiny_tokenizer, tmp_path,
                                                                    chromium_dom):
    viewer = Viewer(tmp_path / "viewer.html", "tiny")
    viewer.add("after_sft", episodes["memsearcher"], tiny_tokenizer)
    viewer.add("sweep: full_context, N=2", episodes["full_context"], tiny_tokenizer)
    dom = chromium_dom(tmp_path / "viewer.html")
    assert dom.count("class=\"point\"") == 2 and dom.count("class=\"ep\"") == 4
    turns = sum(len(t.info["turn_log"]) for ts in episodes.values() for t in ts)
    assert dom.count("class=\"turn\"") == turns
    assert "memory viewer" in dom and "sweep: full_context, N=2" in dom


def test_a_resumed_run_adds_to_the_page_its_killed_process_wrote(episodes, tiny_tokenizer, tmp_path):
    first = Viewer(tmp_path / "viewer.html", "tiny")
    first.add("after_sft", episodes["memsearcher"], tiny_tokenizer)
    resumed = Viewer(tmp_path / "viewer.html", "tiny", resume=True)  # a new process, after a kill
    resumed.add("sweep: full_context, N=2", episodes["full_context"], tiny_tokenizer)
    assert list(resumed.points) == ["after_sft", "sweep: full_context, N=2"]
    page = (tmp_path / "viewer.html").read_text()
    assert ">after_sft</h2>" in page and ">sweep: full_context, N=2</h2>" in page
    fresh = Viewer(tmp_path / "viewer.html", "tiny")  # a fresh run (no --resume) starts its own page
    fresh.add("after_sft", episodes["memsearcher"], tiny_tokenizer)
    assert list(fresh.points) == ["after_sft"] and ">sweep: full_context" not in (tmp_path / "viewer.html").read_text()
