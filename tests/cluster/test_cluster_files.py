"""The cluster files hold the paper recipes: enough 8-GPU nodes, the same shared paths (/models, /data, /mnt/runs)
on every node, a node-local MEMRL_CACHE, NCCL settings. Parsed only: no network, no cluster (they have not run on
GPUs); each assertion fails if the YAML regresses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from memrl.plan import PlanError, check_storage
from memrl.recipes.schema import load_recipe

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
PAPER_RECIPES = ("mem1", "memsearcher", "search-r1")
TIED = ("memsearcher", "search-r1")  # Qwen2.5-3B(-Instruct) tie the LM head to the embedding; Qwen2.5-7B does not
SHARED = ("/models", "/data", "/mnt/runs")
NCCL_ENV = ("NCCL_SOCKET_IFNAME", "NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING")
ENV_PATHS = ("corpus", "index", "encoder", "data_dir")  # env.kwargs that name files every rollout worker reads


def launcher() -> dict:
    return yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())


def rayjob() -> dict:
    docs = list(yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text()))
    assert len(docs) == 1, "rayjob.yaml is one RayJob document"
    return docs[0]


def under(path: str | PurePosixPath, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(root)


def asked(name: str) -> tuple[float, float]:
    """(GPUs, CPUs) a recipe asks of the Ray cluster: its rollout engines, its learner ranks and its retrieval
    service."""
    r = load_recipe(name)
    gpus = r.rollout.workers * r.resources.gpus_per_worker + r.learner.ranks * r.resources.gpus_per_learner_rank
    cpus = r.rollout.workers * r.resources.cpus_per_worker + r.learner.ranks * r.resources.cpus_per_learner_rank
    if r.retrieval.serve:  # the run's retrieval service
        cpus += r.retrieval.replicas * r.retrieval.cpus_per_replica
    return gpus, cpus


# ---------------------------------------------------------------- Ray cluster launcher (AWS)


def launcher_workers(cfg: dict) -> dict[str, dict]:
    return {k: t for k, t in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def docker_view(cfg: dict, node_type: str) -> tuple[dict[str, str], dict[str, str]]:
    """What a node's container sees: {container path: host path} of its -v mounts and {name: value} of its -e
    variables, from the global run_options plus the head's or the worker type's own."""
    docker = cfg["docker"]
    opts = list(docker.get("run_options", []))
    if node_type == cfg["head_node_type"]:
        opts += docker.get("head_run_options", [])
    else:
        opts += docker.get("worker_run_options", [])
        opts += cfg["available_node_types"][node_type].get("docker", {}).get("worker_run_options", [])
    args = shlex.split(" ".join(opts))
    mounts, env = {}, {}
    for flag, value in zip(args, args[1:], strict=False):  # each flag with the word after it
        if flag in ("-v", "--volume"):
            host, container = value.split(":")[:2]
            mounts[container] = host
        elif flag in ("-e", "--env"):
            key, _, val = value.partition("=")
            env[key] = val
    return mounts, env


def test_launcher_file_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(launcher()))  # raises on an unknown or mistyped key


def test_launcher_head_is_cpu_only_and_workers_have_8_gpus():
    cfg = launcher()
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = launcher_workers(cfg)
    assert workers
    for name, t in workers.items():
        assert t["resources"]["GPU"] == 8, name


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_launcher_max_workers_hold_the_paper_recipe(name):
    cfg = launcher()
    workers = launcher_workers(cfg)
    nodes = min(cfg["max_workers"], sum(t["max_workers"] for t in workers.values()))
    assert nodes >= 2  # sized for 2 nodes of 8 GPUs
    gpus = min(t["resources"]["GPU"] for t in workers.values()) * nodes  # whichever types the autoscaler picks
    cpus = min(t["resources"]["CPU"] for t in workers.values()) * nodes
    need_gpus, need_cpus = asked(name)
    assert gpus >= need_gpus and cpus >= need_cpus, (gpus, need_gpus, cpus, need_cpus)


@pytest.mark.parametrize("node_type", list(launcher()["available_node_types"]))
def test_launcher_every_node_mounts_shared_storage_and_a_local_cache(node_type):
    cfg = launcher()
    mounts, env = docker_view(cfg, node_type)
    assert set(SHARED) <= set(mounts), mounts
    cache = env["MEMRL_CACHE"]
    assert cache in mounts and not any(under(cache, s) for s in SHARED)
    # models, data and runs come from one shared file system that the hosts mount; the cache's host dir is not on it
    root = PurePosixPath(mounts["/models"]).parent
    assert all(under(mounts[s], root) for s in SHARED) and not under(mounts[cache], root)
    assert any("mount " in c and str(root) in c for c in cfg["initialization_commands"])
    assert all(k in env for k in NCCL_ENV), env
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def test_launcher_gpu_nodes_have_efa_and_a_large_shm():
    cfg = launcher()
    for name, t in launcher_workers(cfg).items():
        _, env = docker_view(cfg, name)
        assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1", name
        shm = [o for o in shlex.split(" ".join(t["docker"]["worker_run_options"])) if o.startswith("--shm-size=")]
        assert len(shm) == 1 and shm[0].endswith("g") and int(shm[0][len("--shm-size="):-1]) >= 64, name


def test_launcher_gpu_nodes_make_the_untied_copy_the_driver_hands_out():
    """The driver hands out the path of a tied model's untied copy in its own MEMRL_CACHE: every GPU node must
    make the same copy (same name, same cache path) before the run."""
    setup = " ".join(launcher()["worker_setup_commands"])
    assert "memrl model prepare" in setup
    for name in TIED:
        assert load_recipe(name).model.name in re.split(r"[\s;]+", setup), name


# ---------------------------------------------------------------- KubeRay RayJob


def pods(job: dict) -> dict[str, tuple[dict, int]]:
    """{group: (pod spec, pod count)}: the head and each worker group."""
    spec = job["spec"]["rayClusterSpec"]
    out = {"head": (spec["headGroupSpec"]["template"]["spec"], 1)}
    for g in spec["workerGroupSpecs"]:
        out[g["groupName"]] = (g["template"]["spec"], g["replicas"])
    return out


def pod_view(pod: dict, container: dict | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """{mount path: the volume behind it} and {name: value} of a container's env (default: the Ray container)."""
    c = container or pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    return mounts, {e["name"]: e.get("value") for e in c.get("env", [])}


def test_rayjob_runs_the_recipe_from_the_head_configmap():
    job = rayjob()
    assert job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"] == "memrl train /recipes/recipe.yaml --set resources.address=auto"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    mounts, _ = pod_view(head["template"]["spec"])
    assert "configMap" in mounts["/recipes"]


def test_rayjob_workers_have_8_gpus_and_hold_every_paper_recipe():
    groups = {k: v for k, v in pods(rayjob()).items() if k != "head"}
    assert groups
    gpus = cpus = 0
    for name, (pod, count) in groups.items():
        limits = pod["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "8", name
        assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "8", name
        gpus += 8 * count
        cpus += float(limits["cpu"]) * count
    assert gpus >= 16  # 2 pods of 8
    for recipe in PAPER_RECIPES:
        need_gpus, need_cpus = asked(recipe)
        assert gpus >= need_gpus and cpus >= need_cpus, recipe


def test_rayjob_every_pod_mounts_shared_storage_and_a_local_cache():
    found = pods(rayjob())
    assert len(found) >= 2
    for group, (pod, _) in found.items():
        mounts, env = pod_view(pod)
        for path in SHARED:
            assert "persistentVolumeClaim" in mounts.get(path, {}), (group, path)
        cache = env["MEMRL_CACHE"]
        assert "emptyDir" in mounts[cache] or "hostPath" in mounts[cache], (group, cache)  # node-local
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory", group
        assert all(k in env for k in NCCL_ENV), (group, env)
        assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def test_rayjob_workers_make_the_untied_copy_the_driver_hands_out():
    for group, (pod, _) in pods(rayjob()).items():
        if group == "head":
            continue
        init = [c for c in pod.get("initContainers", []) if "resolve_model_dir" in " ".join(c["command"])]
        assert init, group
        mounts, env = pod_view(pod, init[0])
        _, ray_env = pod_view(pod)
        assert env["MEMRL_CACHE"] == ray_env["MEMRL_CACHE"] and env["MEMRL_CACHE"] in mounts
        assert "/recipes/recipe.yaml" in " ".join(init[0]["command"])
        assert {"/recipes", "/models"} <= set(mounts)


# ---------------------------------------------------------------- paper recipes vs the mounts


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipe_paths_are_on_shared_storage(name):
    r = load_recipe(name)
    assert under(r.model.name, "/models")
    paths = {k: r.env.kwargs[k] for k in ENV_PATHS if k in r.env.kwargs}
    assert {"corpus", "data_dir"} <= set(paths)
    for key, path in paths.items():
        assert under(path, "/models") or under(path, "/data"), (key, path)
    assert under(r.output_dir, "/mnt/runs")
    check_storage(r, nodes=3)  # a head and 2 GPU nodes: an absolute output_dir is accepted
    with pytest.raises(PlanError, match="relative"):
        check_storage(load_recipe(name, ["output_dir=runs/{name}"]), nodes=3)
