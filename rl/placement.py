"""Where the run's actors go: learner ranks and rollout engines, split or colocated (`resources.placement`).

- `split` (default): each learner rank has a bundle of its own in one placement group (`cpus_per_learner_rank`,
  `gpus_per_learner_rank`), and each rollout engine is an actor asking `cpus_per_worker` / `gpus_per_worker` (a
  tensor-parallel engine gets all its GPUs in its one actor). Learner and engine never share a GPU; the GPU recipes
  run asynchronously (`algorithm.max_staleness: 1`, partial rollouts) so that neither side waits for the other.
- `colocated`: learner rank i and engine i share bundle i (`cpus_per_learner_rank + cpus_per_worker` CPUs and
  `gpus_per_learner_rank` GPUs). Each of the two asks half of the bundle's GPUs, so Ray hands both the same
  device(s). The engine sleeps while the learner trains (vLLM `sleep(level=1)`: its weights go to host memory and
  its KV cache is freed) and wakes before the next weight update (`SyncBackend.start`), as verl's hybrid engine
  and OpenRLHF's `--colocate_all_models` do. Sleeping needs CUDA: on CPU the same calls run and vLLM's are skipped.
  Rollout and learning then alternate by construction: colocation needs `algorithm.max_staleness: 0`, one engine
  per rank and `rollout.tensor_parallel_size: 1`.

Everything here but `Placement` is pure (no Ray): `layout` is what `memrl recipe plan` and the tests read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One actor's place: its bundle in the run's placement group (None: a free actor) and what it asks."""

    bundle: int | None
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class Layout:
    """The placement group's bundles and the slot of each learner rank and each rollout engine."""

    placement: str
    bundles: list[dict[str, float]]
    ranks: list[Slot]
    workers: list[Slot]

    def total(self, resource: str) -> float:
        """CPUs or GPUs the run occupies in all: its bundles and its free engine actors."""
        free = [w.num_cpus if resource == "CPU" else w.num_gpus for w in self.workers if w.bundle is None]
        return sum(b.get(resource, 0.0) for b in self.bundles) + sum(free)

    @property
    def cpus(self) -> float:
        return self.total("CPU")

    @property
    def gpus(self) -> float:
        return self.total("GPU")


def layout(res, ranks: int, workers: int) -> Layout:
    """The bundles and slots of `ranks` learner ranks and `workers` rollout engines under a recipe's `resources`
    section (module docstring)."""
    cl, gl, cw, gw = (res.cpus_per_learner_rank, res.gpus_per_learner_rank, res.cpus_per_worker,
                      res.gpus_per_worker)
    if res.placement == "colocated":
        bundle = {"CPU": cl + cw, **({"GPU": gl} if gl else {})}
        return Layout("colocated", [dict(bundle) for _ in range(ranks)],
                      [Slot(i, cl, gl / 2) for i in range(ranks)], [Slot(i, cw, gl / 2) for i in range(workers)])
    bundle = {"CPU": cl, **({"GPU": gl} if gl else {})}
    return Layout("split", [dict(bundle) for _ in range(ranks)], [Slot(i, cl, gl) for i in range(ranks)],
                  [Slot(None, cw, gw) for _ in range(workers)])


class Placement:
    """The run's placement group, made from `layout(recipe)`; `options(slot)` are an actor's Ray options."""

    def __init__(self, lay: Layout, timeout: float) -> None:
        import ray
        from ray.util.placement_group import placement_group

        self.layout = lay
        self.pg = placement_group([dict(b) for b in lay.bundles], strategy="PACK")
        if not ray.wait([self.pg.ready()], timeout=timeout)[0]:
            ray.util.remove_placement_group(self.pg)
            raise RuntimeError(f"the cluster did not place the run's {len(lay.bundles)} bundle(s) {lay.bundles[0]} "
                               f"({lay.placement}) within {timeout:.0f}s (learner.ranks, resources.cpus_per_learner_rank, "
                               "resources.gpus_per_learner_rank" + (", resources.cpus_per_worker"
                                                                   if lay.placement == "colocated" else "")
                               + "; rollout.rollout_timeout)")

    @classmethod
    def create(cls, recipe) -> Placement:
        return cls(layout(recipe.resources, recipe.learner.ranks, recipe.rollout.workers),
                   recipe.rollout.rollout_timeout)

    @property
    def colocated(self) -> bool:
        return self.layout.placement == "colocated"

    def options(self, slot: Slot) -> dict:
        """Ray actor options for `slot`: its resources, and its bundle when it has one."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        opts = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus}
        if slot.bundle is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.pg,
                                                                           placement_group_bundle_index=slot.bundle)
        return opts

    def remove(self) -> None:
        import ray

        ray.util.remove_placement_group(self.pg)


def fit_on_nodes(lay: Layout, nodes: list[dict[str, float]]) -> str | None:
    """Whether the bundles and free engine actors of `lay` can be placed on nodes with these total resources
    (first fit, largest first, as a placement group packs whole bundles); None if they can, else what cannot."""
    free = [{"CPU": float(n.get("CPU", 0.0)), "GPU": float(n.get("GPU", 0.0))} for n in nodes]
    asks = [(f"bundle {i} {b}", b) for i, b in enumerate(lay.bundles)]
    asks += [(f"rollout engine {i} ({w.num_cpus:g} CPU, {w.num_gpus:g} GPU)", {"CPU": w.num_cpus, "GPU": w.num_gpus})
             for i, w in enumerate(lay.workers) if w.bundle is None]
    for what, need in sorted(asks, key=lambda a: (-a[1].get("GPU", 0.0), -a[1].get("CPU", 0.0))):
        node = next((n for n in free if all(n[k] + 1e-9 >= need.get(k, 0.0) for k in ("CPU", "GPU"))), None)
        if node is None:
            left = ", ".join(f"{n['CPU']:g} CPU / {n['GPU']:g} GPU" for n in free)
            return f"{what} fits on no node of {len(nodes)} with what is left ({left})"
        for k in ("CPU", "GPU"):
            node[k] -= need.get(k, 0.0)
    return None
