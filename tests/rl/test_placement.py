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


# ------------------------------------------------------------------------------------ split | colocated (rl.placement)
def _gpu_recipe(*sets: str):
    return load_recipe("quickstart", ["resources.gpus_per_learner_rank=1", "resources.gpus_per_worker=1", *sets])


def test_colocated_rank_and_engine_share_a_bundle_and_split_gives_each_its_own():
    from memrl.rl.placement import Slot, layout

    co = _gpu_recipe("resources.placement=colocated", "learner.ranks=2", "rollout.workers=2")
    lay = layout(co.resources, 2, 2)
    assert lay.bundles == [{"CPU": 2.0, "GPU": 1.0}] * 2 and lay.gpus == 2 and lay.cpus == 4
    assert lay.ranks == [Slot(0, 1.0, 0.5), Slot(1, 1.0, 0.5)] and lay.workers == [Slot(0, 1.0, 0.5), Slot(1, 1.0, 0.5)]
    split = _gpu_recipe("learner.ranks=2", "rollout.workers=2", "rollout.tensor_parallel_size=2",
                        "resources.gpus_per_worker=2")
    lay = layout(split.resources, 2, 2)
    assert lay.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2 and lay.gpus == 2 + 2 * 2 and lay.cpus == 4
    assert lay.workers == [Slot(None, 1.0, 2.0)] * 2  # a tensor-parallel engine: all its GPUs in its one actor


@pytest.mark.parametrize(("sets", "problem"), [
    (["rollout.workers=2"], r"one rollout engine per learner rank \(rollout.workers=2, learner.ranks=1\)"),
    (["algorithm.max_staleness=1"], r"algorithm.max_staleness: 0 \(got 1\)"),
    (["rollout.tensor_parallel_size=2"], r"rollout.tensor_parallel_size: 1 \(got 2\)"),
])
def test_a_recipe_that_cannot_be_colocated_is_refused_naming_the_keys(sets, problem):
    from memrl.recipes.schema import RecipeError

    with pytest.raises(RecipeError, match="resources.placement: colocated needs " + problem):
        load_recipe("quickstart", ["resources.placement=colocated", *sets])


def test_a_colocated_shortfall_is_named_before_any_model_loads():
    recipe = _gpu_recipe("resources.placement=colocated", "learner.ranks=4", "rollout.workers=4")
    check_resources(recipe, {"CPU": 8.0, "GPU": 4.0})  # 4 GPUs: each holds a rank and an engine
    with pytest.raises(PlanError, match=r"colocated recipe needs 4 GPU \(learner.ranks x resources.gpus_per_learner_rank"
                                        r" = 4 x 1, each shared with a rollout engine\) but the Ray cluster has 2"):
        check_resources(recipe, {"CPU": 8.0, "GPU": 2.0})
    with pytest.raises(PlanError, match=r"needs 8 CPU \(learner.ranks x \(resources.cpus_per_learner_rank \+ "
                                        r"resources.cpus_per_worker\) = 4 x \(1 \+ 1\)\) but the Ray cluster has 6"):
        check_resources(recipe, {"CPU": 6.0, "GPU": 4.0})


PROBE = r'''
import json, sys
import ray
from memrl.recipes.schema import load_recipe
from memrl.rl.placement import Placement

ray.init(num_cpus=8, num_gpus=6, include_dashboard=False, configure_logging=False)  # declared GPUs: none exist


@ray.remote
class Probe:
    def gpus(self):
        return [str(g) for g in ray.get_gpu_ids()]


out = {}
for name, sets in json.loads(sys.argv[1]).items():
    recipe = load_recipe("quickstart", sets)
    placement = Placement.create(recipe)
    lay = placement.layout
    ranks = [Probe.options(**placement.options(s)).remote() for s in lay.ranks]
    workers = [Probe.options(**placement.options(s)).remote() for s in lay.workers]
    out[name] = {"ranks": ray.get([r.gpus.remote() for r in ranks], timeout=60),
                 "workers": ray.get([w.gpus.remote() for w in workers], timeout=60)}
    for a in ranks + workers:
        ray.kill(a)
    placement.remove()
print(json.dumps(out))
'''


def test_placement_on_declared_gpus_gives_each_actor_its_devices(tmp_path):
    """Ray with 6 declared (fake) GPUs, in a process of its own: colocated, rank i and engine i get the same GPU and
    no two ranks share one; split, every rank and every tensor-parallel engine gets GPUs no other actor has."""
    import json
    import subprocess
    import sys

    cases = {"colocated": ["resources.gpus_per_learner_rank=1", "resources.placement=colocated", "learner.ranks=3",
                           "rollout.workers=3", "resources.num_cpus=8"],
             "split": ["resources.gpus_per_learner_rank=1", "learner.ranks=2", "rollout.workers=2",
                       "rollout.tensor_parallel_size=2", "resources.gpus_per_worker=2"]}
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    done = subprocess.run([sys.executable, str(script), json.dumps(cases)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    co = got["colocated"]
    assert all(len(g) == 1 for g in co["ranks"] + co["workers"]) and co["ranks"] == co["workers"]
    assert len({g[0] for g in co["ranks"]}) == 3  # three GPUs, each holding one rank and its engine
    split = got["split"]
    assert [len(g) for g in split["ranks"]] == [1, 1] and [len(g) for g in split["workers"]] == [2, 2]
    every = [g for a in split["ranks"] + split["workers"] for g in a]
    assert len(every) == len(set(every)) == 6  # no GPU shared


def test_fit_on_nodes_packs_whole_bundles_and_names_the_one_that_does_not_fit():
    from memrl.rl.placement import fit_on_nodes, layout

    eight = {"CPU": 32.0, "GPU": 8.0}
    split = load_recipe("memsearcher")  # 4 ranks + 4 engines, one GPU each
    assert fit_on_nodes(layout(split.resources, 4, 4), [eight]) is None
    assert "fits on no node of 2" in fit_on_nodes(layout(split.resources, 4, 4), [{"CPU": 32.0, "GPU": 4.0},
                                                                                  {"CPU": 32.0, "GPU": 3.0}])
    tp = _gpu_recipe("rollout.tensor_parallel_size=2", "resources.gpus_per_worker=2", "rollout.workers=2")
    ones = [{"CPU": 8.0, "GPU": 1.0}] * 6  # 6 GPUs in all, but a tensor-parallel engine needs 2 on one node
    assert fit_on_nodes(layout(tp.resources, 1, 2), ones).startswith("rollout engine 0 (1 CPU, 2 GPU) fits on no node")
    assert fit_on_nodes(layout(tp.resources, 1, 2), [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 1.0}]) is None
