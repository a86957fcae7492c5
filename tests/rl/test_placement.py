"""A recipe that the Ray cluster cannot hold fails before any model loads, naming the resource and the keys."""

import pytest

from memrl.plan import PlanError
from memrl.recipes.schema import load_recipe
from memrl.rl.learner_group import check_resources


def test_a_plan_that_fits_passes():
    recipe = load_recipe("quickstart")  # 1 rollout worker + 1 learner rank, one CPU each
    check_resources(recipe, {"CPU": 2.0})


def test_missing_cpus_name_the_keys_that_asked_for_them():
    recipe = load_recipe("quickstart", ["rollout.workers=2", "learner.ranks=2"])
    with pytest.raises(PlanError, match=r"needs 4 CPU \(rollout.workers x resources.cpus_per_worker \+ learner.ranks "
                                        r"x resources.cpus_per_learner_rank = 2 x 1 \+ 2 x 1\) but the Ray cluster has 2"):
        check_resources(recipe, {"CPU": 2.0})


def test_the_retrieval_service_counts_in_the_cpus():
    recipe = load_recipe("quickstart", ["retrieval.serve=true", "retrieval.replicas=2", "retrieval.cpus_per_replica=4"])
    with pytest.raises(PlanError, match=r"needs 10 CPU \(.* \+ retrieval.replicas x retrieval.cpus_per_replica = "
                                        r"1 x 1 \+ 1 x 1 \+ 2 x 4\) but the Ray cluster has 8"):
        check_resources(recipe, {"CPU": 8.0})


def test_missing_gpus_are_refused_too():
    recipe = load_recipe("memsearcher")  # 4 engines + 4 learner ranks, one GPU each
    with pytest.raises(PlanError, match=r"needs 8 GPU .* = 4 x 1 \+ 4 x 1\) but the Ray cluster has 4"):
        check_resources(recipe, {"CPU": 64.0, "GPU": 4.0})
    check_resources(recipe, {"CPU": 64.0, "GPU": 8.0})


def test_on_a_cluster_joined_by_address_a_shortfall_only_warns(caplog):
    """An autoscaler may still add the GPU nodes; the placement group's wait then names the same keys."""
    recipe = load_recipe("memsearcher", ["resources.address=auto"])
    check_resources(recipe, {"CPU": 4.0})
    assert "needs 8 GPU" in caplog.text and "waiting for an autoscaler" in caplog.text


def test_a_relative_output_dir_on_several_nodes_is_refused_before_anything_starts(tmp_path):
    from memrl.plan import check_storage

    relative = load_recipe("quickstart")  # output_dir: runs/{name}
    check_storage(relative, 1)  # one node: every part of the run lands on its disk
    with pytest.raises(PlanError, match=r"output_dir 'runs/\{name\}' is relative but the Ray cluster has 2 nodes"):
        check_storage(relative, 2)
    check_storage(load_recipe("quickstart", [f"output_dir={tmp_path}/{{name}}"]), 2)


def test_a_hung_rank_ends_the_call_with_an_error_naming_it(ray_local):
    """A rank that does not finish within the timeout is named with the key that sets it; the others' results
    are not waited for forever. (The stall is a sleeping Ray actor method, not a real stuck NCCL broadcast.)"""
    from memrl.rl.learner_group import RankTimeout, wait_ranks

    class Rank:  # defined here: Ray ships it by value (a test module is not importable on its workers)
        def send_weights(self, stall_s: float) -> str:
            import time

            time.sleep(stall_s)
            return "sent"

    ranks = [ray_local.remote(num_cpus=0)(Rank).remote() for _ in range(3)]
    try:
        assert wait_ranks([r.send_weights.remote(0.0) for r in ranks], 30, "weight sync v1",
                          "rollout.sync_timeout") == ["sent"] * 3
        refs = [r.send_weights.remote(60.0 if i == 1 else 0.0) for i, r in enumerate(ranks)]
        with pytest.raises(RankTimeout, match=r"weight sync v2: learner rank\(s\) \[1\] of 3 did not finish within 2 s "
                                              r"\(rollout.sync_timeout\)"):
            wait_ranks(refs, 2, "weight sync v2", "rollout.sync_timeout")
    finally:
        for r in ranks:
            ray_local.kill(r)
