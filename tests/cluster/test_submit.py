"""`memrl submit` against a real Ray head (Jobs API over HTTP), and its failure modes without one."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from memrl.cluster import submit as cs
from memrl.recipes.schema import RecipeError

TINY = [
    "name=submit", "model.name=tiny:0", "env.id=memrl.testing:LettersEnv", "env.objectives=1", "env.kwargs={}",
    "agent.memory_tokens=16", "rollout.max_tokens=8", "rollout.max_model_len=1024", "algorithm.group_size=2",
    "algorithm.tasks_per_step=2", "learner.lr=1e-3", "train.eval_tasks=2", "train.steps=2",
    "train.checkpoint_every=2", "train.baseline_agent=null", "train.eval_objectives=[]", "sft.steps=0",
    "logging.progress=false", "train.eval_every=0",
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A private two-node Ray cluster on this machine: a head (1 CPU, with the dashboard) and a second node
    (2 CPUs), each on its own ports, killed by process group at the end.

    Not `ray stop`: that would also stop the session's own `ray.init` cluster (tests/conftest.py).
    """
    ray_bin = Path(sys.executable).parent / "ray"
    temp_dir = f"/tmp/rt{uuid.uuid4().hex[:8]}"  # Ray's socket paths must stay under 107 characters
    gcs, dash, agent, agent_grpc, metrics, env_agent, client, nm, om = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray >= 2.5x turns token auth on when ~/.ray/auth_token exists (any earlier ray.init writes one);
    # this test is about submission, so the head runs without it whatever the machine holds.
    env["RAY_AUTH_MODE"] = "disabled"
    # Jobs run `memrl train`: on the cluster image it is on PATH; here it is in this venv.
    env["PATH"] = f"{ray_bin.parent}{os.pathsep}{env.get('PATH', '')}"
    head_log = tmp_path_factory.mktemp("ray-head") / "ray-start.log"  # a file: a pipe nobody reads can fill
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--num-cpus=1", "--include-dashboard=true", "--disable-usage-stats",
         f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={env_agent}", f"--ray-client-server-port={client}",
         f"--node-manager-port={nm}", f"--object-manager-port={om}"],
        env=env, stdout=head_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    nodes: list[subprocess.Popen] = [head]

    def kill() -> str:
        for node in reversed(nodes):
            try:  # `ray start --block` drains the node and stops the Ray processes it started on SIGTERM
                node.terminate()
                node.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(node.pid, signal.SIGKILL)  # whatever is left in its process group
            except ProcessLookupError:
                pass
            node.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
        return head_log.read_text()[-5000:]

    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except ConnectionError:
                pass
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray head did not serve its Jobs API at {address}")
            time.sleep(1)
        # the second node: its own raylet, object manager and agents on fresh ports, 2 CPUs
        nm2, om2, agent2, agent_grpc2, metrics2, env_agent2 = _free_ports(6)
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=2",
             "--disable-usage-stats", f"--node-manager-port={nm2}", f"--object-manager-port={om2}",
             f"--dashboard-agent-listen-port={agent2}", f"--dashboard-agent-grpc-port={agent_grpc2}",
             f"--metrics-export-port={metrics2}", f"--runtime-env-agent-port={env_agent2}"],
            env=env, stdout=(head_log.parent / "ray-node2.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True))
        from ray.util.state import list_nodes

        while len([n for n in list_nodes(address=address) if n.state == "ALIVE"]) < 2:
            if nodes[1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the second Ray node did not join: "
                                   + (head_log.parent / "ray-node2.log").read_text()[-3000:])
            time.sleep(1)
    except BaseException as exc:
        pytest.fail(f"{exc}\n{kill()}")
    try:
        yield address
    finally:
        kill()


@pytest.mark.slow
def test_submitted_recipe_trains_on_the_cluster_and_its_logs_come_back(ray_head, tmp_path, capsys):
    """Two nodes (1 + 2 CPUs): the rollout worker and two gloo learner ranks (a placement group of 2 CPUs, which
    only the second node can hold) train to the end, exported model included."""
    out = tmp_path / "run"
    job_id = cs.submit("quickstart", [*TINY, f"output_dir={out}", "learner.ranks=2", "train.control=false"], ray_head)
    try:
        assert any(j["id"] == job_id and j["recipe"] == "submit" for j in cs.list_jobs(ray_head))
        state = cs.wait_for(job_id, ray_head, timeout=600)
    finally:
        cs.stop(job_id, ray_head)  # a no-op once it ended; else its driver would outlive the test
    log = "".join(cs.logs(job_id, ray_head))
    assert state == "SUCCEEDED", log[-5000:]
    assert "run finished: 2 GRPO steps" in log, log[-5000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "grpo"] == [0, 1]
    assert all(r["skipped"] == 0.0 and r["grad_norm"] > 0 for r in rows if r["phase"] == "grpo")
    model = Path(json.loads((out / "summary.json").read_text())["model"])
    assert (model / "config.json").is_file() and (model / "model.safetensors").stat().st_size > 0
    followed = "".join(cs.logs(job_id, ray_head, follow=True))  # an ended job: the whole log, then stops
    assert "run finished: 2 GRPO steps" in followed
    assert cs.stop(job_id, ray_head) is False  # already ended

    parser = argparse.ArgumentParser(prog="memrl")
    cs.add_cli(parser.add_subparsers(dest="command", required=True))
    capsys.readouterr()
    for argv, expected in ((["jobs", "status", job_id], "SUCCEEDED"), (["jobs", "list"], f"{job_id}  SUCCEEDED"),
                           (["jobs", "logs", job_id], "run finished: 2 GRPO steps")):
        assert cs.run_cli(parser.parse_args([*argv, "--address", ray_head])) == 0
        assert expected in capsys.readouterr().out
    assert cs.run_cli(parser.parse_args(["jobs", "status", "raysubmit_nope", "--address", ray_head])) == 1
    assert "no job 'raysubmit_nope'" in capsys.readouterr().err

def test_relative_output_dir_on_two_nodes_is_refused_before_the_job_starts(ray_head):
    """The run's storage rule (`memrl.plan.check_storage`) at submit: the cluster has 2 nodes alive, so a relative
    output_dir is an error naming the key, and no job is created."""
    from memrl.plan import PlanError

    assert cs.alive_nodes(ray_head) == 2
    before = {j["id"] for j in cs.list_jobs(ray_head)}
    with pytest.raises(PlanError, match="output_dir 'runs/{name}' is relative but the Ray cluster has 2 nodes"):
        cs.submit("quickstart", TINY, ray_head)
    assert {j["id"] for j in cs.list_jobs(ray_head)} == before


def test_bad_recipe_raises_before_any_network(monkeypatch):
    def no_network(address):
        raise AssertionError("the cluster was contacted for an invalid recipe")

    monkeypatch.setattr(cs, "_client", no_network)
    with pytest.raises(RecipeError, match="train.stepz"):
        cs.submit("quickstart", ["train.stepz=3"], "http://127.0.0.1:8265")


def test_unreachable_address_names_it_and_says_how_to_start_a_head():
    address = f"http://127.0.0.1:{_free_ports(1)[0]}"
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

    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{_free_ports(1)[0]}")
    assert cs.run_cli(parser.parse_args(["jobs", "status", "raysubmit_1"])) == 1
    assert "cannot reach the Ray Jobs API" in capsys.readouterr().err
    assert cs.run_cli(parser.parse_args(["submit", "quickstart", "--set", "nope=1"])) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err
