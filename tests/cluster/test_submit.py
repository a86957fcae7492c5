"""`memrl submit`: its failure modes without a cluster (a run on a real two-node cluster: test_multinode.py)."""

from __future__ import annotations

import argparse

import pytest
from local_cluster import free_ports  # tests/cluster/local_cluster.py (pytest puts this folder on sys.path)

from memrl.cluster import submit as cs
from memrl.recipes.schema import RecipeError

TINY = [
    "name=submit", "model.name=tiny:0", "env.id=memrl.testing:LettersEnv", "env.objectives=1", "env.kwargs={}",
    "agent.memory_tokens=16", "rollout.max_tokens=8", "rollout.max_model_len=1024", "algorithm.group_size=2",
    "algorithm.tasks_per_step=2", "learner.lr=1e-3", "train.eval_tasks=2", "train.steps=2",
    "train.checkpoint_every=2", "train.baseline_agent=null", "train.eval_objectives=[]", "sft.steps=0",
    "logging.progress=false", "train.eval_every=0",
]


def test_bad_recipe_raises_before_any_network(monkeypatch):
    def no_network(address):
        raise AssertionError("the cluster was contacted for an invalid recipe")

    monkeypatch.setattr(cs, "_client", no_network)
    with pytest.raises(RecipeError, match="train.stepz"):
        cs.submit("quickstart", ["train.stepz=3"], "http://127.0.0.1:8265")


def test_unreachable_address_names_it_and_says_how_to_start_a_head():
    address = f"http://127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(cs.ClusterError, match="ray start --head --dashboard-host 0.0.0.0") as err:
        cs.submit("quickstart", TINY, address)
    assert address in str(err.value)


def test_cli_parses_submit_and_jobs_and_reports_errors(capsys, monkeypatch):
    parser = argparse.ArgumentParser(prog="memrl")
    cs.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["submit", "quickstart", "--set", "train.steps=2", "--set", "name=x", "--wait",
                              "--address", "http://h:8265"])
    assert (args.recipe, args.set, args.wait, args.address) == ("quickstart", ["train.steps=2", "name=x"], True,
                                                                "http://h:8265")
    assert args.func is cs.run_cli
    args = parser.parse_args(["jobs", "logs", "raysubmit_1", "--follow"])
    assert (args.jobs_action, args.job_id, args.follow, args.address) == ("logs", "raysubmit_1", True, None)
    assert parser.parse_args(["jobs", "list"]).jobs_action == "list"

    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_ports(1)[0]}")
    assert cs.run_cli(parser.parse_args(["jobs", "status", "raysubmit_1"])) == 1
    assert "cannot reach the Ray Jobs API" in capsys.readouterr().err
    assert cs.run_cli(parser.parse_args(["submit", "quickstart", "--set", "nope=1"])) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err
