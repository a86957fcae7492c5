"""A first cluster run that works, on a local two-node Ray cluster whose nodes share nothing but the run's storage.

Each node has its own memrl cache and working directory, and (where this machine allows a private mount namespace)
cannot see the other node's: a tiny tied-embedding model (which every node must untie into its own cache) trains with
its two learner ranks on the second node while the driver and the rollout worker run on the head; the driver is
SIGKILLed after a checkpoint; the run, submitted again with --resume, continues from that checkpoint with no step
lost or repeated; the checkpoint's manifest holds rank 1's shard; the exported model loads in transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from local_cluster import Node, can_hide_paths, local_cluster  # tests/cluster/local_cluster.py

from memrl.cluster import submit as cs
from memrl.models import save_tiny_model
from memrl.rl import checkpoint

pytestmark = pytest.mark.slow

STEPS = 6  # room to kill mid-run: a tiny step can take well under a second on a fast machine


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """shared/ (the model and the runs: what every node mounts), head/ and node2/ (each node's own disk: working
    directory and $MEMRL_CACHE)."""
    root = tmp_path_factory.mktemp("multinode")
    for d in ("shared/runs", "head/cache", "node2/cache"):
        (root / d).mkdir(parents=True)
    save_tiny_model(root / "shared" / "tiny-tied", tied=True)
    assert json.loads((root / "shared" / "tiny-tied" / "config.json").read_text())["tie_word_embeddings"] is True
    return root


@pytest.fixture(scope="module")
def cluster(layout):
    hide = can_hide_paths()
    nodes = [Node(cpus=1, env={"MEMRL_CACHE": str(layout / "head/cache")}, cwd=layout / "head",
                  hide=[layout / "node2"] if hide else []),
             Node(cpus=2, env={"MEMRL_CACHE": str(layout / "node2/cache")}, cwd=layout / "node2",
                  hide=[layout / "head"] if hide else [])]
    logs = layout / "ray-logs"
    logs.mkdir()
    with local_cluster(logs, nodes) as address:
        yield address, hide


def _recipe(layout: Path) -> list[str]:
    return [
        "name=multinode", f"model.name={layout / 'shared/tiny-tied'}", f"output_dir={layout / 'shared/runs/{name}'}",
        "env.id=memrl.testing:LettersEnv", "env.objectives=1", "env.kwargs={}", "agent.memory_tokens=16",
        "rollout.max_tokens=8", "rollout.max_model_len=1024", "algorithm.group_size=2", "algorithm.tasks_per_step=2",
        "learner.lr=1e-3", "learner.ranks=2", "train.eval_tasks=2", f"train.steps={STEPS}", "train.checkpoint_every=1",
        "train.keep_checkpoints=2", "train.baseline_agent=null", "train.eval_objectives=[]", "sft.steps=0",
        "logging.progress=false", "train.eval_every=0", "train.control=false", "train.zero_shot_eval=false",
    ]


def _drivers() -> list[int]:
    """PIDs of the job's driver (`memrl train recipe.yaml`, and the shell that started it)."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in ps.splitlines()
            if f"memrl train {cs.RECIPE_FILE}" in line and "ps -eo" not in line]


def _grpo_steps(out: Path) -> list[int]:
    """GRPO steps in the run's metrics.jsonl so far (complete lines only: the run may be writing one)."""
    path = out / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []
    return [r["step"] for r in rows if r["phase"] == "grpo"]


def test_relative_output_dir_on_two_nodes_is_refused_before_the_job_starts(cluster, layout):
    """The run's storage rule (`memrl.plan.check_storage`) at submit: the cluster has 2 nodes alive, so a relative
    output_dir is an error naming the key, and no job is created."""
    from memrl.plan import PlanError

    address, _ = cluster
    assert cs.alive_nodes(address) == 2
    before = {j["id"] for j in cs.list_jobs(address)}
    with pytest.raises(PlanError, match="output_dir 'runs/{name}' is relative but the Ray cluster has 2 nodes"):
        cs.submit("quickstart", [*_recipe(layout), "output_dir=runs/{name}"], address)
    assert {j["id"] for j in cs.list_jobs(address)} == before


def test_recipe_plan_reads_the_clusters_nodes(cluster, layout, capsys):
    """`memrl recipe plan --address`: the nodes alive and their resources, and whether the run's bundles fit."""
    from memrl.cli import main

    address, _ = cluster
    sets = [a for kv in _recipe(layout) for a in ("--set", kv)]
    assert main(["recipe", "plan", "quickstart", *sets, "--address", address]) == 0
    out = capsys.readouterr().out
    assert "2 node(s) alive, 3 CPU, 0 GPU; the run asks 3 CPU, 0 GPU (split)" in out
    assert "the learner ranks and engines fit on the cluster's nodes" in out
    assert main(["recipe", "plan", "quickstart", *sets, "--set", "resources.cpus_per_learner_rank=1.5",
                 "--address", address]) == 2  # 2 x 1.5 + 1 = 4 CPU on nodes of 1 and 2
    assert "cannot place the run's learner ranks and engines: bundle" in capsys.readouterr().err


def test_a_killed_run_resumes_on_nodes_that_share_only_its_storage(cluster, layout, capsys):
    address, hidden = cluster
    out = layout / "shared/runs/multinode"
    job = cs.submit("quickstart", _recipe(layout), address)
    try:
        assert any(j["id"] == job and j["recipe"] == "multinode" for j in cs.list_jobs(address))
        deadline = time.monotonic() + 600
        polls = 0
        while checkpoint.latest(out / "checkpoints") is None or not _grpo_steps(out):
            if polls % 20 == 0:  # the job's state every 2 s; the files every 0.1 s, so the kill lands within a step
                assert cs.status(job, address) in ("PENDING", "RUNNING"), "".join(cs.logs(job, address))[-5000:]
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            polls += 1
            time.sleep(0.1)
        pids = _drivers()
        assert pids, "the job's driver process was not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        state = cs.wait_for(job, address, timeout=180)
    finally:
        cs.stop(job, address)
    assert state in ("FAILED", "STOPPED")
    done = _grpo_steps(out)
    assert 1 <= len(done) < STEPS, done  # killed mid-run

    again = cs.submit("quickstart", _recipe(layout), address, resume=True)
    try:
        state = cs.wait_for(again, address, timeout=600)
    finally:
        cs.stop(again, address)
    log = "".join(cs.logs(again, address))
    assert state == "SUCCEEDED", log[-5000:]
    assert "resumed from" in log and f"run finished: {STEPS} GRPO steps" in log, log[-5000:]
    assert _grpo_steps(out) == list(range(STEPS))  # nothing lost, nothing repeated
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["skipped"] == 0.0 and r["grad_norm"] > 0 for r in rows if r["phase"] == "grpo")
    followed = "".join(cs.logs(again, address, follow=True))  # an ended job: the whole log, then stops
    assert f"run finished: {STEPS} GRPO steps" in followed
    assert cs.stop(again, address) is False  # already ended
    parser = argparse.ArgumentParser(prog="memrl")
    cs.add_cli(parser.add_subparsers(dest="command", required=True))
    capsys.readouterr()
    for argv, expected in ((["jobs", "status", again], "SUCCEEDED"), (["jobs", "list"], f"{again}  SUCCEEDED"),
                           (["jobs", "logs", again], "resumed from")):
        assert cs.run_cli(parser.parse_args([*argv, "--address", address])) == 0
        assert expected in capsys.readouterr().out
    assert cs.run_cli(parser.parse_args(["jobs", "status", "raysubmit_nope", "--address", address])) == 1
    assert "no job 'raysubmit_nope'" in capsys.readouterr().err

    # every rank's shard is in the run's storage and in the manifest
    last = checkpoint.latest(out / "checkpoints")
    manifest = json.loads((last / checkpoint.MANIFEST).read_text())
    assert any("zero_pp_rank_1_" in name for name in manifest), sorted(manifest)
    # each node untied the model into its own cache; neither wrote anything under its own working directory
    for node in ("head", "node2"):
        untied = [json.loads(p.read_text()) for p in (layout / node / "cache").rglob("config.json")]
        assert any(c.get("tie_word_embeddings") is False for c in untied), (node, untied)
        assert not (layout / node / "runs").exists()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(json.loads((out / "summary.json").read_text())["model"])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = model.generate(**tok("hello", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert ids.shape[1] > 1
    print(f"nodes {'could not see' if hidden else 'could see (no private mount namespace here)'} each other's disk")
