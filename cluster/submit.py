"""Run a recipe on a remote Ray cluster through the Ray Jobs API (HTTP, the dashboard port).

`submit` validates the recipe here, writes it fully resolved to `recipe.yaml` in a temporary
directory, and ships that directory as the job's runtime_env `working_dir`; the job's entrypoint is
`memrl train recipe.yaml`. By default memrl itself is NOT shipped: the cluster image must have it
installed (see cluster/Dockerfile.gpu, cluster/ray-cluster.yaml, cluster/rayjob.yaml). Pass `pip=`
(e.g. `["memrl[gpu]==0.1.0"]`) or `py_modules=` to install or ship it per job instead.

`add_cli(sub)` (called from `memrl.cli.build_parser`) adds `memrl submit` and `memrl jobs ...`; the
parsers set `func=run_cli`, so `main()` dispatches them like every other command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RECIPE_FILE = "recipe.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# What is never worth uploading when a user's working_dir is copied next to the recipe.
_SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "runs", ".pytest_cache", ".ruff_cache")


class ClusterError(RuntimeError):
    """The cluster could not be reached, or refused what was asked (the message says what to do)."""


def default_address() -> str:
    """The Jobs API address: $RAY_ADDRESS (as `ray job submit` reads it) or the local dashboard."""
    return os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def _client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:  # Ray's own message says where the token must be
        raise ClusterError(f"the Ray cluster at {address!r} requires a token: set RAY_AUTH_MODE=token and "
                           f"RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token.\n{exc}") from exc
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {address!r} ({exc}). Is a Ray head running there with its "
            "dashboard reachable? Start one with `ray start --head --dashboard-host 0.0.0.0` and pass "
            "--address http://HEAD_IP:8265 (or set RAY_ADDRESS)."
        ) from exc


@contextmanager
def _known_job(job_id: str, address: str) -> Iterator[None]:
    """Turn the Jobs API's 404 into an error that says how to find the right id."""
    try:
        yield
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            raise ClusterError(f"no job {job_id!r} on {address}; `memrl jobs list --address {address}` "
                               "lists the jobs there") from exc
        raise


def _resolved_recipe(recipe: str, overrides: list[str]):
    from memrl.recipes.schema import load_recipe

    rc = load_recipe(recipe, overrides)  # raises RecipeError: a bad recipe never reaches the cluster
    if rc.resources.address is None:
        # `memrl train` would otherwise start a private Ray on the head node; inside a job, "auto"
        # joins the job's own cluster (Ray sets RAY_ADDRESS for the entrypoint).
        rc = rc.model_copy(update={"resources": rc.resources.model_copy(update={"address": "auto"})})
    return rc


def alive_nodes(address: str) -> int | None:
    """How many nodes the cluster at `address` (its dashboard) has alive now; None when it cannot say."""
    try:
        from ray.util.state import list_nodes

        return sum(1 for n in list_nodes(address=address, filters=[("state", "=", "ALIVE")], timeout=30,
                                         raise_on_missing_output=False))
    except Exception as exc:  # an old dashboard, a proxy without the state API: the run checks again at start
        log.warning("could not count the cluster's nodes (%s); `memrl train` checks output_dir again there", exc)
        return None


def node_resources(address: str) -> list[dict[str, float]]:
    """The total resources (CPU, GPU, ...) of each node alive in the cluster at `address` (its dashboard)."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], detail=True, timeout=30,
                       raise_on_missing_output=False)
    return [dict(n.resources_total) for n in nodes]


def check_output_dir(rc, address: str) -> None:
    """The run's storage rule (`memrl.plan.check_storage`, which `memrl train` applies at start) before submitting: a relative output_dir on a cluster
    of more than one node is an error here, not after the job started; on one node it is a warning (the run then
    lands in the job's temporary working directory on the head)."""
    from memrl.plan import check_storage

    if Path(rc.out).is_absolute():
        return
    nodes = alive_nodes(address)
    if nodes is not None:
        check_storage(rc, nodes)
    log.warning("output_dir %r is relative: on the cluster it lands in the job's temporary working "
                "directory on the head node; set output_dir to shared storage to keep the run", rc.output_dir)


def submit(recipe: str, overrides: list[str], address: str, *, working_dir: str | None = None,
           pip: list[str] | None = None, py_modules: list[str] | None = None,
           entrypoint_num_cpus: float | None = None, wait: bool = False, resume: bool = False) -> str:
    """Validate `recipe` (+ `--set` overrides) here, submit `memrl train` of it as a Ray job; return the job id.

    `working_dir` (optional) is copied beside the resolved recipe and uploaded with it (skipping .git,
    .venv, runs/, caches). `pip` / `py_modules` go into the runtime_env unchanged. `wait` blocks until
    the job ends; check the outcome with `status`. `resume`: the job continues the run in the recipe's output_dir
    from its last intact checkpoint (`memrl train --resume`), e.g. after its driver was killed.
    """
    from memrl.recipes.schema import dump

    rc = _resolved_recipe(recipe, overrides)
    client = _client(address)
    check_output_dir(rc, address)
    with tempfile.TemporaryDirectory(prefix="memrl-submit-") as tmp:
        ship = Path(tmp) / "job"
        if working_dir is not None:
            shutil.copytree(working_dir, ship, ignore=_SKIP)
        else:
            ship.mkdir()
        (ship / RECIPE_FILE).write_text(dump(rc))
        runtime_env: dict[str, Any] = {"working_dir": str(ship)}
        if pip:
            runtime_env["pip"] = list(pip)
        if py_modules:
            runtime_env["py_modules"] = list(py_modules)
        # The working_dir is zipped and uploaded during submit_job, so the temp dir may go afterwards.
        job_id = client.submit_job(entrypoint=f"memrl train {RECIPE_FILE}" + (" --resume" if resume else ""),
                                   runtime_env=runtime_env,
                                   metadata={"memrl_recipe": rc.name, "memrl_source": str(recipe)},
                                   entrypoint_num_cpus=entrypoint_num_cpus)
    log.info("submitted %s (recipe %s) to %s", job_id, rc.name, address)
    if wait:
        wait_for(job_id, address)
    return job_id


def wait_for(job_id: str, address: str, timeout: float | None = None, poll: float = 1.0) -> str:
    """Block until the job is SUCCEEDED, FAILED or STOPPED; return that status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (state := status(job_id, address)) not in TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f}s")
        time.sleep(poll)
    return state


def status(job_id: str, address: str) -> str:
    """The job's status as a string: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    client = _client(address)
    with _known_job(job_id, address):
        return str(client.get_job_status(job_id).value)


def logs(job_id: str, address: str, follow: bool = False) -> Iterator[str]:
    """The job's driver log: one chunk (all of it so far), or, with `follow`, chunks until the job ends."""
    client = _client(address)
    with _known_job(job_id, address):
        if not follow:
            yield client.get_job_logs(job_id)
            return
        client.get_job_status(job_id)  # a 404 here reads better than a websocket error later
    loop = asyncio.new_event_loop()
    tail = client.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(tail.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(tail.aclose())
        loop.close()


def stop(job_id: str, address: str) -> bool:
    """Ask the cluster to stop the job; False if it had already ended."""
    client = _client(address)
    with _known_job(job_id, address):
        return bool(client.stop_job(job_id))


def list_jobs(address: str) -> list[dict[str, Any]]:
    """Every job the cluster knows: id, status, memrl recipe (if any), entrypoint, start time (ms)."""
    rows = []
    for job in _client(address).list_jobs():
        rows.append({"id": job.submission_id or job.job_id, "status": str(job.status.value),
                     "recipe": (job.metadata or {}).get("memrl_recipe", ""), "entrypoint": job.entrypoint,
                     "start_time": job.start_time})
    return sorted(rows, key=lambda r: r["start_time"] or 0)


# ---------------------------------------------------------------------------------------------- CLI
def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `submit RECIPE ...` and `jobs {status,logs,stop,list} ...` on an argparse subparsers object."""
    address_help = f"Ray Jobs API address (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})"
    p = subparsers.add_parser("submit", help="run a recipe on a Ray cluster as a Ray job")
    p.add_argument("recipe", help="shipped recipe name or a YAML path (validated here before submitting)")
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    p.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeded")
    p.add_argument("--working-dir", default=None, help="a local directory to upload with the recipe")
    p.add_argument("--pip", action="append", default=None, metavar="REQ",
                   help="pip requirement to install for the job (repeatable), e.g. 'memrl[gpu]==0.1.0'")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in output_dir from its last intact checkpoint (a killed job)")
    p.set_defaults(func=run_cli, cluster_command="submit")

    jobs = subparsers.add_parser("jobs", help="inspect and stop Ray jobs").add_subparsers(
        dest="jobs_action", required=True)
    for name, text in (("status", "print a job's status"), ("logs", "print a job's driver log"),
                       ("stop", "stop a job"), ("list", "list the cluster's jobs")):
        q = jobs.add_parser(name, help=text)
        if name != "list":
            q.add_argument("job_id", metavar="ID")
        if name == "logs":
            q.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
        q.add_argument("--address", default=None, help=address_help)
        q.set_defaults(func=run_cli, cluster_command="jobs")


def _print_stream(chunks: Iterator[str]) -> None:
    for chunk in chunks:
        sys.stdout.write(chunk)
        sys.stdout.flush()


def run_cli(args: argparse.Namespace) -> int:
    """Run what `add_cli` parsed; print errors as `error: ...` and return the exit code."""
    from memrl.plan import PlanError
    from memrl.recipes.schema import RecipeError

    address = args.address or default_address()
    try:
        if args.cluster_command == "submit":
            job_id = submit(args.recipe, args.set, address, working_dir=args.working_dir, pip=args.pip,
                            entrypoint_num_cpus=args.entrypoint_num_cpus, resume=args.resume)
            print(f"submitted {job_id} to {address}")
            if not args.wait:
                print(f"follow it:  memrl jobs logs {job_id} --follow --address {address}")
                return 0
            _print_stream(logs(job_id, address, follow=True))
            state = wait_for(job_id, address)
            print(f"job {job_id}: {state}")
            return 0 if state == "SUCCEEDED" else 1
        action = args.jobs_action
        if action == "status":
            print(status(args.job_id, address))
        elif action == "logs":
            _print_stream(logs(args.job_id, address, follow=args.follow))
        elif action == "stop":
            print(f"stopping {args.job_id}" if stop(args.job_id, address) else f"{args.job_id} had already ended")
        else:
            rows = list_jobs(address)
            for r in rows:
                print(f"{r['id']}  {r['status']:<9}  {r['recipe'] or '-':<16}  {r['entrypoint']}")
            if not rows:
                print(f"no jobs on {address}")
        return 0
    except (ClusterError, RecipeError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (RecipeError, PlanError)) else 1
