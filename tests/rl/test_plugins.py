"""Seams: an agent, a policy loss and a weight-sync backend registered from outside memrl
(tests/plugins/memrl_example_plugin.py) are named in a recipe, validated, shipped to the Ray actors and trained with
(the training run is also the colocated placement's: its engine sleeps while its learner rank trains)."""

import sys

import pytest

from memrl import registry
from memrl.recipes.schema import RecipeError, load_recipe

PLUGIN = "tests.plugins.memrl_example_plugin"


def _forget_plugin() -> None:
    sys.modules.pop(PLUGIN, None)
    registry.AGENTS.unregister("test_notes")
    registry.POLICY_LOSSES.unregister("test_reinforce")
    registry.WEIGHT_SYNCS.unregister("test_checked_blob")


def test_a_recipes_plugins_are_imported_before_it_is_validated():
    _forget_plugin()
    with pytest.raises(RecipeError, match="unknown policy loss 'test_reinforce'"):
        load_recipe("quickstart", ["algorithm.policy_loss=test_reinforce"])
    r = load_recipe("quickstart", [f"plugins=[{PLUGIN}]", "agent.name=test_notes", "agent.first_note=hi",
                                   "algorithm.policy_loss=test_reinforce"])
    assert r.agent.settings() == {"first_note": "hi"}
    assert registry.plugin_modules(r.plugins) == [PLUGIN]  # what every Ray actor of the run imports
    with pytest.raises(RecipeError, match="unknown weight sync 'test_checked_blb'.*did you mean 'test_checked_blob'"):
        load_recipe("quickstart", [f"plugins=[{PLUGIN}]", "rollout.weight_sync=test_checked_blb"])
    with pytest.raises(RecipeError, match="plugins.*cannot be imported"):
        load_recipe("quickstart", ["plugins=[no_such_plugin_module]"])


def test_an_agents_own_settings_are_checked_against_its_constructor(tiny_tokenizer):
    from memrl.agents import make_agent
    from memrl.recipes.schema import AgentCfg

    __import__(PLUGIN)
    agent = make_agent(tiny_tokenizer, AgentCfg(name="test_notes", first_note="n1"))
    assert agent.first_note == "n1" and agent.start("q?", {}).memory == "n1"
    with pytest.raises(ValueError, match=r"does not take \['first_not'\]; its settings: first_note"):
        make_agent(tiny_tokenizer, AgentCfg(name="test_notes", first_not="n1"))


def test_a_name_registered_in_main_cannot_reach_the_actors():
    def local_loss(logp, old_logp, adv, seq, **kw):
        return -adv * logp, {}

    registry.POLICY_LOSSES.register("test_local", local_loss)
    try:
        with pytest.raises(ValueError, match="registered from __main__ or inside a function"):
            registry.plugin_modules()
    finally:
        registry.POLICY_LOSSES.unregister("test_local")


@pytest.mark.slow
def test_an_agent_and_a_policy_loss_from_outside_the_package_train(tmp_path, ray_local):
    from memrl.rl.metrics import read_metrics
    from memrl.rl.trainer import Trainer
    from memrl.testing import letters_recipe

    __import__(PLUGIN)  # registers in this process only; the trainer ships the module to its actors
    recipe = letters_recipe(tmp_path / "run", 2, **{"agent.name": "test_notes", "agent.first_note": "plugin note",
                                                   "algorithm.policy_loss": "test_reinforce",
                                                   "rollout.weight_sync": "test_checked_blob",
                                                   "resources.placement": "colocated"})
    trainer = Trainer(recipe)
    try:
        trainer.run()
        calls = trainer.weights.backend.calls
        # colocated (rl/placement.py): the engine shares the learner rank's bundle, sleeps before each update and
        # is woken by the plugin's start (vLLM's sleep itself is skipped on CPU; the calls are what is checked)
        assert trainer.placement.colocated and len(trainer.placement.layout.bundles) == 1
        assert ray_local.get(trainer.rollouts.workers[0].sleep_calls.remote()) == (2, 2)
        assert type(trainer.weights.backend).__name__ == "CheckedBlobSync" and trainer.version >= 2  # a sync a step
    finally:
        trainer.close()
    # the protocol, in order, for versions 1, 2, ...; each committed after every engine held it
    assert calls == [c for v in range(1, trainer.version + 1)
                     for c in (("init", None), ("start", v), ("update", v), ("finish", v))]
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "grpo"]
    assert len(recs) == 2 and all(r["skipped"] == 0.0 for r in recs)
    assert all(r["reinforce_tokens"] == 1.0 for r in recs)  # the learner rank (a Ray actor) ran the plugin's loss
    # the rollout workers (Ray actors) played the plugin's agent: its note is the first memory of every episode
    assert "plugin note" in (tmp_path / "run" / "viewer.html").read_text()
