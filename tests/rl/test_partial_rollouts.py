"""Partial rollouts: a weight update lands on an engine while episodes are mid-way. Requests in flight finish
with the old weights, later turns are sampled by the new ones, and every context records the version that
sampled it (checked against a recomputation of its log-probs under each version's weights)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from memrl.agents import SamplingConfig, make_agent, run_episodes, streaming_policy
from memrl.agents.backends import Generation
from memrl.agents.evaluate import version_mix
from memrl.models import load_model
from memrl.recipes.schema import AgentCfg, RecipeError, load_recipe
from memrl.records import Context, Trajectory
from memrl.rl.losses import token_logprobs
from memrl.testing import LettersEnv

TURNS = 4


class WaitsForUpdate(LettersEnv):
    """Episode 0's first step signals `started`, then returns only once the engine is paused for an update:
    so its later turns are, for certain, sampled after the update began."""

    def __init__(self, backend, started: threading.Event, first: bool) -> None:
        super().__init__(turns=TURNS)
        self.backend, self.started, self.first = backend, started, first

    def step(self, action):
        if self.first and not self._scores:
            self.started.set()
            deadline = time.monotonic() + 60
            while not self.backend.pausing and time.monotonic() < deadline:
                time.sleep(0.001)
        return super().step(action)


def _logprobs(model, ctx: Context) -> torch.Tensor:
    ids = torch.tensor([ctx.token_ids])
    with torch.no_grad():
        lp = token_logprobs(model(input_ids=ids).logits.float(), ids)[0]
    return lp[torch.tensor(ctx.loss_mask, dtype=torch.bool)]


@pytest.mark.slow
def test_an_update_mid_episode_gives_later_turns_the_new_weights(vllm_tiny, tiny_dir, tiny_tokenizer):
    old = load_model(tiny_dir)
    new = load_model(tiny_dir)
    torch.manual_seed(11)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    v0 = vllm_tiny.version
    started = threading.Event()
    envs = [WaitsForUpdate(vllm_tiny, started, first=i == 0) for i in range(6)]
    agent = make_agent(tiny_tokenizer, AgentCfg(name="memsearcher", memory_tokens=16))
    out: dict = {}

    def rollout():
        out["trajs"] = run_episodes(agent, envs, range(6), streaming_policy(vllm_tiny),
                                    SamplingConfig(max_tokens=12, temperature=1.0, seed=5), env_timeout=60,
                                    weight_version=v0)

    thread = threading.Thread(target=rollout)
    try:
        thread.start()
        assert started.wait(60)
        vllm_tiny.load_state_dict(new.state_dict(), version=v0 + 1)  # lands while the episodes stream
        thread.join(120)
        assert not thread.is_alive()
        trajs = out["trajs"]
        versions = [t.context_versions() for t in trajs]
        assert all(len(v) == TURNS for v in versions)
        assert versions[0] == [v0] + [v0 + 1] * (TURNS - 1)  # its first step returned only during the update
        for vs in versions:
            assert set(vs) <= {v0, v0 + 1} and vs == sorted(vs)
        assert version_mix(trajs)["mixed_version_trajectories"] >= 1
        # every context's log-probs are those of the weights of its recorded version, never of the other one
        for t in trajs:
            for ctx, v in zip(t.contexts, t.context_versions(), strict=True):
                mine, other = (old, new) if v == v0 else (new, old)
                behaviour = torch.tensor([x for x, m in zip(ctx.logprobs, ctx.loss_mask, strict=True) if m])
                assert torch.allclose(_logprobs(mine, ctx), behaviour, atol=1e-4)
                assert (_logprobs(other, ctx) - behaviour).abs().max() > 1e-2
    finally:
        thread.join(120)
        vllm_tiny.load_state_dict(old.state_dict(), version=vllm_tiny.version + 1)
    assert not vllm_tiny.pausing and vllm_tiny.in_flight() == 0


@pytest.mark.slow
def test_a_control_call_inside_a_held_pause_keeps_the_engine_paused(vllm_tiny):
    """A failed update leaves the engine paused; re-forming its transfer group (join/leave, version reads) must
    not let held prompts in on half-new weights: only the update's finish resumes."""
    vllm_tiny.pause()
    try:
        assert isinstance(vllm_tiny.engine_weight_version(), str)  # an RPC inside the held pause runs ...
        assert vllm_tiny.pausing  # ... and leaves it held
    finally:
        vllm_tiny.resume()
    assert not vllm_tiny.pausing


def test_version_mix_counts_trajectories_an_update_landed_in():
    def traj(start, *versions):
        return Trajectory([Context([1, 2], [0, 1], [0.0, -1.0], v) for v in versions], 1.0, weight_version=start)

    mix = version_mix([traj(3, 3, 3, 4), traj(3, 3, 3), traj(4, 4, 4, 4)])
    assert mix == {"mixed_version_trajectories": 1.0, "newer_version_context_share": 1 / 8}  # 1 of 8 contexts


def test_a_growing_context_is_as_old_as_its_oldest_generation(tiny_tokenizer):
    agent = make_agent(tiny_tokenizer, AgentCfg(name="full_context"))
    state = agent.start("Write lowercase letters.", {"tools": {}, "max_turns": 2})
    ids = agent.encode("<answer>x</answer>")
    for version in (3, 4):
        prompt = agent.context_ids(state)
        gen = Generation(ids, [-0.1] * len(ids), "<answer>x</answer>", "stop", weight_version=version)
        agent.update(state, prompt, gen, agent.parse(gen.text, state), "obs")
    assert [c.weight_version for c in state.contexts] == [3]  # one context, sampled by versions 3 and 4


def test_partial_rollouts_need_an_overlapped_rollout():
    with pytest.raises(RecipeError, match="algorithm.partial_rollouts needs algorithm.max_staleness"):
        load_recipe("quickstart", ["algorithm.partial_rollouts=true"])
    assert load_recipe("quickstart", ["algorithm.partial_rollouts=true", "algorithm.max_staleness=1"])


@pytest.mark.slow
def test_trainer_lands_updates_mid_rollout_and_trains_on_mixed_version_trajectories(tmp_path, ray_local):
    """algorithm.partial_rollouts: each step's update goes to the engines while the next step's rollout streams
    (its env steps are slow: 6 turns of 1 s), so that rollout's trajectories mix two versions; the learner
    trains them (stale contexts corrected, fresh ones not) and the run finishes."""
    from memrl.rl.metrics import read_metrics
    from memrl.rl.trainer import Trainer
    from memrl.testing import letters_recipe

    # 3 steps: the rollouts of steps 1 and 2 run while an update lands; the held-out evals need no slow tool
    recipe = letters_recipe(tmp_path / "run", 3, **{"algorithm.max_staleness": 1, "algorithm.partial_rollouts": "true",
                                                    "env.kwargs": "{turns: 6, step_s: 1.0}", "algorithm.tasks_per_step": 2,
                                                    "env.eval_kwargs": "{step_s: 0.0}", "train.eval_tasks": 4,
                                                    "train.zero_shot_eval": "false"})
    trainer = Trainer(recipe)
    try:
        trainer.run()
    finally:
        trainer.close()
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "grpo"]
    assert [r["weight_version"] for r in recs] == [1, 2, 3]
    assert recs[0]["mixed_version_trajectories"] == 0  # step 0's rollout ran before any update
    print("mixed", [r["mixed_version_trajectories"] for r in recs],
          "newer share", [round(r["newer_version_context_share"], 3) for r in recs],
          "wait", [round(r["time_wait_next_rollout"], 2) for r in recs])
    mixed = recs[1:3]  # steps 1 and 2 trained on rollouts that an update landed in
    assert all(r["mixed_version_trajectories"] > 0 and 0 < r["newer_version_context_share"] < 1 for r in mixed)
    assert all(r["staleness_0"] > 0 and r["staleness_1"] > 0 and r["offpolicy_tokens"] > 0 for r in mixed)
    assert all(r["time_wait_next_rollout"] < 0.5 for r in recs)  # the update never waited for the rollout
