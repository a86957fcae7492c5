"""Learner ranks as Ray actors: the driver schedules, the ranks hold the model.

`LearnerGroup` starts `learner.ranks` actors in a placement group (one bundle of
`resources.cpus_per_learner_rank` CPUs and `gpus_per_learner_rank` GPUs each, so Ray never hands a
learner's GPU to a rollout worker). Rank 0 names the rendezvous address; the ranks form a
torch.distributed group (gloo on CPU, NCCL on GPU: `memrl.device`) and each builds a DeepSpeed
`Learner` over it, so ZeRO 1/2/3 shard over the ranks.

One optimizer step: the driver computes every context's loss weights over the whole minibatch
(`rl.batching.minibatch`), cuts it into per-rank shares of whole trajectories balanced by tokens
(`rl.batching.split`) and sends each rank its share; the ranks backward their shares (loss scaled by the
world size, since DeepSpeed averages gradients) and step together. The update is therefore the same
for any number of ranks (tested: 1 vs 2 ranks, ZeRO-2 and ZeRO-3).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from memrl.net import free_port
from memrl.records import Trajectory
from memrl.rl.batching import split
from memrl.rl.step import run_step

if TYPE_CHECKING:
    from memrl.recipes.schema import AlgorithmCfg, LearnerCfg, ResourcesCfg, RolloutCfg
    from memrl.rl.placement import Placement

log = logging.getLogger(__name__)


def check_resources(recipe, available: dict[str, float]) -> None:
    """Fail before any model loads when the cluster (`ray.cluster_resources()`) cannot hold the recipe's rollout
    workers and learner ranks; the message names the resource and the recipe keys that asked for it. On a
    cluster joined by address (`resources.address`) an autoscaler may still add nodes: there it is a warning,
    and the placement group's wait (`rollout.rollout_timeout`) fails with the same keys if none come."""
    from memrl.plan import PlanError
    from memrl.rl.placement import layout

    res = recipe.resources
    lay = layout(res, recipe.learner.ranks, recipe.rollout.workers)  # what the run's actors ask, in one place
    service = _service_cpus(recipe)
    needs = {"CPU": lay.cpus + service[0], "GPU": lay.gpus}
    how = (_colocated_asks if res.placement == "colocated" else _split_asks)(recipe, needs, service)
    for name, need in needs.items():
        have = float(available.get(name, 0.0))
        if need > have + 1e-9:
            problem = f"{how[name]} but the Ray cluster has {have:g}: lower those keys or add nodes"
            if res.address is None:
                raise PlanError(problem)
            log.warning("%s (waiting for an autoscaler)", problem)


def _service_cpus(recipe) -> tuple[float, str]:
    """CPUs of the run's retrieval service, and how they are asked for (as a term of a sum)."""
    ret = recipe.retrieval
    if not ret.serve:
        return 0.0, ""
    return ret.replicas * ret.cpus_per_replica, f" + {ret.replicas} x {ret.cpus_per_replica:g}"


def _split_asks(recipe, needs: dict[str, float], service: tuple[float, str]) -> dict[str, str]:
    """Per resource, a sentence naming the keys behind a split recipe's need (engines and ranks apart)."""
    r, res, n = recipe.rollout, recipe.resources, recipe.learner.ranks
    service_term = service[1]
    service_keys = " + retrieval.replicas x retrieval.cpus_per_replica" if service_term else ""
    return {
        "CPU": f"the recipe needs {needs['CPU']:g} CPU (rollout.workers x resources.cpus_per_worker + learner.ranks x "
               f"resources.cpus_per_learner_rank{service_keys} = {r.workers} x {res.cpus_per_worker:g} + {n} x "
               f"{res.cpus_per_learner_rank:g}{service_term})",
        "GPU": f"the recipe needs {needs['GPU']:g} GPU (rollout.workers x resources.gpus_per_worker + learner.ranks x "
               f"resources.gpus_per_learner_rank = {r.workers} x {res.gpus_per_worker:g} + {n} x "
               f"{res.gpus_per_learner_rank:g})",
    }


def _colocated_asks(recipe, needs: dict[str, float], service: tuple[float, str]) -> dict[str, str]:
    """Per resource, a sentence naming the keys behind a colocated recipe's need (rank i and engine i share one
    bundle: rl.placement)."""
    res, n = recipe.resources, recipe.learner.ranks
    service_keys = f" + retrieval.replicas x retrieval.cpus_per_replica = {service[0]:g}" if service[1] else ""
    return {
        "CPU": f"the colocated recipe needs {needs['CPU']:g} CPU (learner.ranks x (resources.cpus_per_learner_rank + "
               f"resources.cpus_per_worker) = {n} x ({res.cpus_per_learner_rank:g} + {res.cpus_per_worker:g})"
               f"{service_keys})",
        "GPU": f"the colocated recipe needs {needs['GPU']:g} GPU (learner.ranks x resources.gpus_per_learner_rank = "
               f"{n} x {res.gpus_per_learner_rank:g}, each shared with a rollout engine)",
    }


class RankTimeout(RuntimeError):
    """Learner ranks that did not finish a call within its timeout (a hung collective or transfer)."""


def wait_ranks(refs: list, timeout: float, what: str, key: str) -> list:
    """The results of one call on every rank (`refs`, in rank order), or RankTimeout naming the ranks that had not
    finished after `timeout` seconds (and the recipe key that sets it) instead of waiting forever: one stuck rank
    otherwise hangs the whole job (a collective or a weight broadcast has no watchdog of its own)."""
    import ray

    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    if pending:
        hung = [i for i, r in enumerate(refs) if r in pending]
        raise RankTimeout(f"{what}: learner rank(s) {hung} of {len(refs)} did not finish within {timeout:g} s ({key}); "
                          "a rank is stuck in a collective or a weight transfer, or its node is overloaded")
    return ray.get(list(refs))


class LearnerRank:
    """One data-parallel rank (a Ray actor): joins the ranks' process group and owns a `Learner`."""

    def __init__(self, ranks_per_node: int, plugins: tuple[str, ...] = ()) -> None:
        import torch

        from memrl.registry import import_plugins

        import_plugins(plugins)  # the names this run registered (a recipe's `plugins`, or registrations)
        # Ray limits an actor to as many threads as CPUs it reserved; training and rollouts alternate
        # (synchronous mode), so a rank may use its node's cores while it learns.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_per_node))
        self.learner = None
        self.transfer = None  # this rank's weight-transfer engine (memrl.weight_transfer), once joined
        self.client = None

    def address(self) -> tuple[str, int]:
        """This node's address and a free port: the rendezvous of the group (asked of rank 0)."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def start(self, model_dir: str, sections: dict, seed: int, rank: int, world: int, addr: str, port: int) -> int:
        from memrl.rl.learner import _SOLO_MARK, Learner

        os.environ.pop(_SOLO_MARK, None)
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK="0")  # Ray shows each rank only its own GPU(s)
        self.learner = Learner(model_dir, **sections, seed=seed)
        return os.getpid()

    def train_part(self, part, sft: bool, lr: float | None, version: int | None = None):
        return self.learner.train_part(part, sft, lr, version)

    def state_dict(self) -> dict | None:
        """Every rank takes part (ZeRO-3 gathers); rank 0 returns the full weights."""
        weights = self.learner.state_dict()
        return weights if self.learner.rank == 0 else None

    def weights_blob(self) -> bytes | None:
        """Every rank takes part (ZeRO-3 gathers); rank 0 returns the weights serialized for the engines."""
        blob = self.learner.weights_blob()
        return blob if self.learner.rank == 0 else None

    def join_transfer(self, engines: list, workers_per_engine: int, addr: str, port: int, timeout: float) -> None:
        """Form the weight-transfer group with the engines (Ray handles of rollout workers); every rank calls it."""
        from memrl.weight_transfer import EnginesClient

        self.client = EnginesClient(engines, workers_per_engine, ray=True, timeout=timeout)
        self.transfer = self.learner.weight_transfer(self.client, addr, port)

    def send_weights(self, version: int) -> None:
        """Stream the weights to the engines and commit `version` there (every rank; rank 0 sends)."""
        self.client.version = version
        self.transfer.send_weights()

    def leave_transfer(self) -> None:
        if self.transfer is not None:
            self.transfer.shutdown()
            self.transfer = None

    def save_state(self, out: str) -> tuple[str, list[str]]:
        """This rank's node and the files it sees under `out` after writing its part (`Learner.save_state`)."""
        import ray

        return ray.util.get_node_ip_address(), self.learner.save_state(Path(out))

    def load_state(self, path: str) -> None:
        self.learner.load_state(Path(path))

    def reference_elements(self) -> int:
        return self.learner.reference_elements()

    def get_steps(self) -> int:
        return self.learner.steps

    def reset_optimizer(self) -> None:
        self.learner.reset_optimizer()

    def reset_reference(self) -> None:
        self.learner.reset_reference()

    def load_reference(self, model_dir: str) -> None:
        self.learner.load_reference(model_dir)

    def set_steps(self, steps: int) -> None:
        self.learner.steps = steps


class LearnerGroup:
    """`learner.ranks` LearnerRank actors with the interface of a `Learner` (train_step, state_dict, steps,
    save_state, load_state); the driver process holds no model."""

    def __init__(self, model_dir: str, *, learner: LearnerCfg, algorithm: AlgorithmCfg, rollout: RolloutCfg,
                 resources: ResourcesCfg, seed: int = 0, plugins: tuple[str, ...] = (),
                 placement: Placement | None = None) -> None:
        """`learner.ranks` actors in the run's placement group (`rl.placement`: a bundle of
        `resources.cpus/gpus_per_learner_rank` each, or shared with an engine when colocated; without `placement`,
        a split one of its own), each importing `plugins` (`memrl.registry.plugin_modules`) and then building its
        `Learner`."""
        import ray

        from memrl.rl.placement import Placement, layout

        n, timeout = learner.ranks, rollout.rollout_timeout
        self.loss_agg, self.max_tokens, self.max_staleness = algorithm.loss_agg, rollout.max_tokens, algorithm.max_staleness
        self.timeouts = {"learner.step_timeout": learner.step_timeout, "rollout.sync_timeout": rollout.sync_timeout}
        self._own = placement is None
        if placement is None:
            placement = Placement(layout(resources.model_copy(update={"placement": "split"}), n, 0), timeout)
        self.placement = placement
        cls = ray.remote(LearnerRank)
        self.ranks = [cls.options(**placement.options(slot)).remote(n, tuple(plugins))
                      for slot in placement.layout.ranks]
        addr, port = ray.get(self.ranks[0].address.remote(), timeout=timeout)
        sections = {"learner": learner, "algorithm": algorithm, "rollout": rollout}
        ray.get([r.start.remote(str(model_dir), sections, seed, i, n, addr, port) for i, r in enumerate(self.ranks)],
                timeout=timeout)

    def train_step(self, trajectories: list[Trajectory], sft: bool = False, lr: float | None = None,
                   version: int | None = None) -> dict:
        """`Learner.train_step` over the ranks: weights for the whole minibatch, shares balanced by tokens."""

        def train_shares(part):
            shares = split(part, len(self.ranks))
            return self._all("an optimizer step", "learner.step_timeout", "train_part", shares, sft, lr, version)

        return run_step(trajectories, sft, version, self.loss_agg, self.max_tokens, train_shares, self.max_staleness)

    def _all(self, what: str, key: str, method: str, per_rank: list | None = None, *args) -> list:
        """`method(*args)` on every rank (with `per_rank[i]` first when given), waited for under the timeout that
        `key` sets (`wait_ranks`)."""
        refs = [getattr(r, method).remote(*([per_rank[i]] if per_rank is not None else []), *args)
                for i, r in enumerate(self.ranks)]
        return wait_ranks(refs, self.timeouts[key], what, key)

    def state_dict(self) -> dict:
        """The full weights (rank 0's; every rank takes part in the ZeRO-3 gather)."""
        return self._all("gathering the weights", "rollout.sync_timeout", "state_dict")[0]

    def weights_blob(self) -> bytes:
        """The weights as the engines load them (a safetensors blob made on rank 0): one buffer crosses Ray."""
        return self._all("serializing the weights", "rollout.sync_timeout", "weights_blob")[0]

    def join_transfer(self, engines: list, workers_per_engine: int, timeout: float) -> None:
        """Form the weight-transfer group: rank 0 (at a fresh port on its node) + every engine worker."""
        import ray

        addr, port = ray.get(self.ranks[0].address.remote(), timeout=timeout)
        self._all("forming the weight-transfer group", "rollout.sync_timeout", "join_transfer", None, engines,
                  workers_per_engine, addr, port, timeout)

    def send_weights(self, version: int) -> None:
        """Stream the weights to the engines and commit `version` (every rank; rank 0 sends)."""
        self._all(f"weight sync v{version}", "rollout.sync_timeout", "send_weights", None, version)

    def leave_transfer(self) -> None:
        self._all("leaving the weight-transfer group", "rollout.sync_timeout", "leave_transfer")

    def save_state(self, out: Path) -> list[tuple[str, list[str]]]:
        """Every rank writes its part under `out`; returns each rank's (node, files it sees there), rank order."""
        return self._all("saving a checkpoint", "learner.step_timeout", "save_state", None, str(out))

    def load_state(self, path: Path) -> None:
        self._all("loading a checkpoint", "learner.step_timeout", "load_state", None, str(path))

    def reset_optimizer(self) -> None:
        """`Learner.reset_optimizer` on every rank (the SFT -> GRPO handoff)."""
        import ray

        ray.get([r.reset_optimizer.remote() for r in self.ranks])

    def reset_reference(self) -> None:
        """`Learner.reset_reference` on every rank (ZeRO-3 gathers the weights collectively)."""
        import ray

        ray.get([r.reset_reference.remote() for r in self.ranks])

    def load_reference(self, model_dir: str) -> None:
        import ray

        ray.get([r.load_reference.remote(model_dir) for r in self.ranks])

    @property
    def steps(self) -> int:
        import ray

        return ray.get(self.ranks[0].get_steps.remote())

    @steps.setter
    def steps(self, value: int) -> None:
        import ray

        ray.get([r.set_steps.remote(value) for r in self.ranks])

    def close(self) -> None:
        import ray

        for r in self.ranks:
            ray.kill(r)
        self.ranks = []
        if self._own:  # a run's placement group is the trainer's to remove (its engines may be in it)
            self.placement.remove()
