"""Rollouts: RolloutWorker actors (each a vLLM engine + a pool of envs) and a manager that spreads
a batch of tasks over them, re-runs the work of a worker that died, and keeps every engine's weights
at the learner's version.

Within a worker, episodes are scheduled one by one on the engine (continuous batching): an episode's
next prompt joins the running batch as soon as its env step returns, and env steps run in threads while
the engine decodes (see `memrl.agents.episode`). Weights reach the engines through `rl.sync.WeightSync`
(vLLM's weight-transfer protocol, or the blob fallback). Every rollout call carries the wanted version; a
worker that is behind (restarted by Ray, so back at its initial weights) refuses with `StaleWeights`, and
the manager re-sends the call with the weights as a blob (made once per version by `blob_source`).

Workers are threaded actors: a weight update can arrive while a rollout streams (partial rollouts,
`algorithm.partial_rollouts`). The engine then pauses between two decode steps (`VLLMBackend.pause`), loads
the new weights, and the episodes' next turns use them; each context records the version that sampled it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memrl.agents import SamplingConfig, VLLMBackend, make_agent, run_episodes, streaming_policy
from memrl.envs.registry import build as build_env
from memrl.envs.registry import build_key
from memrl.models import resolve_model_dir
from memrl.records import Trajectory

if TYPE_CHECKING:
    from memrl.recipes.schema import AgentCfg, EnvCfg, ResourcesCfg, RolloutCfg
    from memrl.rl.placement import Placement

log = logging.getLogger(__name__)


# calls a worker serves at once: a rollout, the weight-transfer calls that land during it, and status queries
CONCURRENCY = 4
POLL_S = 60.0  # at most this long between two checks that the busy workers still generate (the hang detector)


class StaleWeights(RuntimeError):
    """A worker was asked for a rollout at a weight version it does not hold, and was given no weights."""


@dataclass
class RolloutStats:
    """Counters of one rollout call (a worker's chunk, or the manager's merge of them): episodes, turns
    (generations), generated tokens, wall seconds, each episode's seconds, and worker restarts."""

    episodes: int = 0
    turns: int = 0
    generated_tokens: int = 0
    wall_time: float = 0.0
    episode_latency: list[float] = field(default_factory=list)
    restarts: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_time if self.wall_time > 0 else 0.0

    def merge(self, other: RolloutStats) -> RolloutStats:
        """The stats of two rollout calls made one after the other."""
        return RolloutStats(self.episodes + other.episodes, self.turns + other.turns,
                            self.generated_tokens + other.generated_tokens, self.wall_time + other.wall_time,
                            self.episode_latency + other.episode_latency, self.restarts + other.restarts)


class RolloutWorker:
    """One vLLM engine and a pool of env instances. Used as a Ray actor, or in-process for eval."""

    def __init__(self, model_dir: str, rollout: RolloutCfg, seed: int = 0, fault: dict | None = None,
                 lora_rank: int = 0, plugins: tuple[str, ...] = (), sleep_mode: bool = False,
                 engine: tuple[int, int] = (0, 1)) -> None:
        from memrl.registry import import_plugins

        import_plugins(plugins)  # agents registered by this run (a recipe's `plugins`, or registrations)
        # `model_dir` may be the recipe's model name: resolved on this node (a tied model's untied copy is made in
        # this node's MEMRL_CACHE: a path from the driver's cache would not exist on another node)
        model_dir = str(resolve_model_dir(model_dir))
        self.backend = VLLMBackend(model_dir, rollout=rollout, seed=seed, lora_rank=lora_rank, sleep_mode=sleep_mode,
                                   engine=engine)
        self.envs: dict[str, list] = {}
        # test hooks: {"die_after_turns": n, "once_file": path} exits mid-rollout; {"turn_sleep_file": path}
        # sleeps the seconds written in that file after each round of finished generations (a slow or hung engine)
        self.fault = fault or {}
        self.last_progress = time.monotonic()  # when this worker last started a chunk or finished a generation
        self.transfer_epoch = 0  # the weight-transfer group this engine is in (0: none; a restarted actor)

    def ready(self) -> int:
        return os.getpid()

    def idle_seconds(self) -> float:
        """Seconds since this worker last started a rollout chunk or finished a generation: the manager's hang
        detector (answered on another actor thread while a rollout runs)."""
        return time.monotonic() - self.last_progress

    def version(self) -> int:
        return self.backend.version

    # vLLM's weight-transfer control plane (driven by learner rank 0 through memrl.weight_transfer.EnginesClient)
    def init_weight_transfer(self, init_info: dict) -> None:
        self.backend.init_weight_transfer(init_info)

    def start_weight_update(self) -> None:
        self.backend.start_weight_update()

    def update_weights(self, update_info: dict) -> None:
        self.backend.update_weights(update_info)

    def finish_weight_update(self, version: int) -> None:
        self.backend.finish_weight_update(version)

    def leave_transfer(self) -> None:
        self.backend.shutdown_weight_transfer()
        self.transfer_epoch = 0

    def get_transfer_epoch(self) -> int:
        return self.transfer_epoch

    def set_transfer_epoch(self, epoch: int) -> None:
        self.transfer_epoch = epoch

    def close(self) -> None:
        self.backend.close()

    # colocation (rl.placement): the engine gives its GPU memory back while the learner trains
    def sleep(self) -> None:
        self.backend.sleep()

    def wake_up(self) -> None:
        self.backend.wake_up()

    def sleep_calls(self) -> tuple[int, int]:
        """(sleeps, wake-ups) asked of this engine so far."""
        return self.backend.sleeps, self.backend.wakes

    def load_blob(self, blob: bytes, version: int) -> int:
        self.backend.load_blob(blob, version)
        return version

    def param_checksum(self) -> float:
        return self.backend.param_checksum()

    def _env_pool(self, env: EnvCfg, n: int) -> list:
        pool = self.envs.setdefault(build_key(env), [])
        while len(pool) < n:
            made = build_env(env)
            prepare = getattr(made.unwrapped, "prepare", None)  # memrl envs (TurnEnv); any gym.Env is accepted
            if prepare is not None:
                prepare()  # indexes are built here, outside the episodes' env timeouts
            pool.append(made)
        return pool[:n]

    def rollout(self, seeds: list[int], group_ids: list[int], env: EnvCfg, agent: AgentCfg,
                sampling: SamplingConfig, version: int = 0, weights: list | None = None,
                env_timeout: float = 60.0, sample_seeds: list[int] | None = None) -> tuple[list[Trajectory], RolloutStats]:
        """Play one episode per seed on this engine (streaming, `run_episodes`) with envs from this worker's
        pool; returns the trajectories in seed order and their stats.

        `version` is the weight version the caller wants: a worker behind it loads `weights[0]` (a Ray ref
        of the weights blob) or, given none, raises StaleWeights; a worker ahead of it just runs. The `fault`
        test hook kills the process (`os._exit(1)`) at the `die_after_turns`-th round of finished generations."""
        self.last_progress = time.monotonic()
        if self.backend.version < version:  # newer is fine: an update may land between dispatch and start
            if not weights:
                raise StaleWeights(f"worker at weight version {self.backend.version}, asked for {version}")
            import ray

            log.info("worker at weight version %d, loading %d", self.backend.version, version)
            self.backend.load_blob(ray.get(weights[0]), version)
        agent_obj = make_agent(self.backend.tokenizer, agent)
        stats = RolloutStats()
        turns_seen = [0]

        def on_turn(live: int, tokens: int) -> None:
            self.last_progress = time.monotonic()
            turns_seen[0] += 1
            stats.turns += live
            stats.generated_tokens += tokens
            marker = self.fault.get("once_file")  # the restarted actor must not die again
            if self.fault.get("die_after_turns") == turns_seen[0] and not (marker and os.path.exists(marker)):
                if marker:
                    open(marker, "w").close()
                os._exit(1)  # a real crash of this worker process, for the fault tests
            sleep_file = self.fault.get("turn_sleep_file")
            if sleep_file and os.path.exists(sleep_file):
                time.sleep(float(open(sleep_file).read()))  # a slow (or, for long, hung) engine, for the tests

        t0 = time.perf_counter()
        trajs = run_episodes(agent_obj, self._env_pool(env, len(seeds)), seeds, streaming_policy(self.backend),
                             sampling, group_ids=group_ids, env_timeout=env_timeout,
                             weight_version=self.backend.version, on_turn=on_turn, sample_seeds=sample_seeds)
        stats.wall_time = time.perf_counter() - t0
        stats.episodes = len(trajs)
        stats.episode_latency = [float(t.info.get("episode_seconds", stats.wall_time)) for t in trajs]
        return trajs, stats


class RolloutManager:
    """Spreads tasks x G over N RolloutWorker actors, load-balanced, with restart-and-rerun on failure."""

    def __init__(self, model_dir: str, *, rollout: RolloutCfg, resources: ResourcesCfg, seed: int = 0,
                 faults: list[dict] | None = None, blob_source=None, lora_rank: int = 0,
                 plugins: tuple[str, ...] = (), placement: Placement | None = None) -> None:
        """`rollout.workers` actors, each with `resources.cpus_per_worker` / `gpus_per_worker` and an engine
        configured by the `rollout` section; `blob_source()` gives the current weights as a blob for a worker
        that comes back from a restart behind; `lora_rank` > 0: the engines take LoRA adapters
        (`learner.lora_rank`); `plugins`: modules each worker imports first (`memrl.registry.plugin_modules`);
        `placement`: the run's (`rl.placement`; colocated engines share the learner ranks' bundles and sleep while
        they train); `faults` (one dict per worker) are test hooks."""
        import ray

        self.timeout = rollout.rollout_timeout
        self.colocated = placement is not None and placement.colocated
        faults = faults or [{}] * rollout.workers
        actor_cls = ray.remote(RolloutWorker)
        self.workers = []
        for i in range(rollout.workers):
            where = (placement.options(placement.layout.workers[i]) if placement is not None else
                     {"num_cpus": resources.cpus_per_worker, "num_gpus": resources.gpus_per_worker})
            self.workers.append(actor_cls.options(**where, max_restarts=-1, max_task_retries=0,
                                                  max_concurrency=CONCURRENCY)
                                .remote(str(model_dir), rollout, seed, faults[i], lora_rank, tuple(plugins),
                                        self.colocated, (i, rollout.workers)))
        ray.get([w.ready.remote() for w in self.workers], timeout=self.timeout)
        self.workers_per_engine = rollout.tensor_parallel_size  # vLLM workers per engine (ranks in a transfer group)
        self.versions = None  # the run's rl.sync.WeightSync, which owns the weight version (set by it)
        self._loaded = 0  # without one: the version of the last `load_blob`
        self.blob_source = blob_source
        self._weights_ref, self._ref_version = None, None

    @property
    def version(self) -> int:
        """The weight version rollouts are dispatched at: the run's (`WeightSync.version`), read, never kept."""
        return self.versions.version if self.versions is not None else self._loaded

    # ------------------------------------------------------------ weight transfer group (rl.sync.NativeSync)
    def transfer_epochs(self) -> list[int]:
        import ray

        return ray.get([w.get_transfer_epoch.remote() for w in self.workers], timeout=self.timeout)

    def mark_transfer_epoch(self, epoch: int) -> None:
        import ray

        ray.get([w.set_transfer_epoch.remote(epoch) for w in self.workers], timeout=self.timeout)

    def leave_transfer(self) -> None:
        """Every live engine leaves its transfer group (a dead one has none to leave)."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        for w in self.workers:
            try:
                ray.get(w.leave_transfer.remote(), timeout=self.timeout)
            except (ActorUnavailableError, RayActorError) as exc:
                log.warning("a rollout worker could not leave its transfer group (%s)", type(exc).__name__)

    def sleep(self) -> None:
        """Colocated engines free their GPU memory for the learner (vLLM sleep level 1); split ones keep it."""
        if self.colocated:
            import ray

            ray.get([w.sleep.remote() for w in self.workers], timeout=self.timeout)

    def wake(self) -> None:
        """Colocated engines take their memory back, before a weight update (`rl.sync.SyncBackend.start`)."""
        if self.colocated:
            import ray

            ray.get([w.wake_up.remote() for w in self.workers], timeout=self.timeout)

    def await_all(self) -> None:
        """Block until every worker answers (Ray restarts dead ones)."""
        for i in range(len(self.workers)):
            self._await_restart(i)

    def _weights_for_restarted(self) -> list:
        """The current weights as a blob reference, for a worker that is behind (made once per version)."""
        import ray

        if self._ref_version != self.version:
            if self.blob_source is None:
                raise StaleWeights(f"a rollout worker is behind weight version {self.version} and this manager has "
                                   "no blob_source to catch it up")
            self._weights_ref, self._ref_version = ray.put(self.blob_source()), self.version
        return [self._weights_ref]

    def load_blob(self, blob: bytes, version: int) -> float:
        """Load new weights into every engine as one blob (rl.sync's blob and adapter paths); returns seconds
        taken. The run's version moves when its WeightSync commits, after every engine has loaded."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        t0 = time.perf_counter()
        self._weights_ref, self._ref_version = ray.put(blob), version
        refs = [w.load_blob.remote(self._weights_ref, version) for w in self.workers]
        for i, ref in enumerate(refs):
            for attempt in range(3):  # a worker that died (e.g. killed for memory) is restarted by Ray: load again
                try:
                    ray.get(ref, timeout=self.timeout)
                    break
                except (ActorUnavailableError, RayActorError) as exc:
                    if attempt == 2:
                        raise RuntimeError(f"rollout worker {i} failed to load weights v{version} 3 times") from exc
                    log.warning("worker %d unavailable during weight sync (%s); waiting for its restart", i,
                                type(exc).__name__)
                    self._await_restart(i)
                    ref = self.workers[i].load_blob.remote(self._weights_ref, version)
        self._loaded = version
        return time.perf_counter() - t0

    def rollout(self, seeds: list[int], group_ids: list[int], env: EnvCfg, agent: AgentCfg,
                sampling: SamplingConfig, env_timeout: float = 60.0, chunks_per_worker: int = 1,
                max_attempts: int = 3, sample_seeds: list[int] | None = None) -> tuple[list[Trajectory], RolloutStats]:
        """Run one episode per seed; returns trajectories in input order and merged stats. `sample_seeds`
        (one per episode, see run_episodes) travel with their episodes, so chunking does not change them."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        n_chunks = max(1, min(len(seeds), len(self.workers) * chunks_per_worker))
        bounds = [round(i * len(seeds) / n_chunks) for i in range(n_chunks + 1)]
        todo = [(c, bounds[c], bounds[c + 1]) for c in range(n_chunks) if bounds[c + 1] > bounds[c]]
        results: dict[int, tuple] = {}
        attempts: dict[int, int] = {}
        idle = list(range(len(self.workers)))
        pending: dict = {}
        merged = RolloutStats()
        t0 = time.perf_counter()
        weights = [self._weights_ref] if self._weights_ref is not None and self._ref_version == self.version else None
        while todo or pending:
            while todo and idle:
                chunk, lo, hi = todo.pop(0)
                w = idle.pop(0)
                ref = self.workers[w].rollout.remote(seeds[lo:hi], group_ids[lo:hi], env, agent, sampling,
                                                    self.version, weights, env_timeout,
                                                    None if sample_seeds is None else sample_seeds[lo:hi])
                pending[ref] = (chunk, lo, hi, w)
            done, _ = ray.wait(list(pending), num_returns=1, timeout=self._poll_s())
            if not done:
                self._check_progress([w for *_, w in pending.values()])
                continue
            ref = done[0]
            chunk, lo, hi, w = pending.pop(ref)
            idle.append(w)
            try:
                results[chunk] = ray.get(ref, timeout=self.timeout)
            except StaleWeights:  # Ray raises the worker's error as a subclass of it
                if weights is not None:
                    raise
                log.warning("worker %d is behind weight version %d (restarted?); sending it the weights as a blob",
                            w, self.version)
                weights = self._weights_for_restarted()
                todo.append((chunk, lo, hi))
            except (RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
                attempts[chunk] = attempts.get(chunk, 0) + 1
                merged.restarts += 1
                if attempts[chunk] >= max_attempts:
                    raise RuntimeError(f"rollout chunk {chunk} failed {max_attempts} times; last error: {exc}") from exc
                log.warning("worker %d died during a rollout (%s); re-running its %d episodes", w, type(exc).__name__,
                            hi - lo)
                todo.append((chunk, lo, hi))
                idle.remove(w)
                self._await_restart(w)
                idle.append(w)
        trajs: list[Trajectory] = []
        for chunk in sorted(results):
            part, stats = results[chunk]
            trajs.extend(part)
            merged.turns += stats.turns
            merged.generated_tokens += stats.generated_tokens
            merged.episode_latency.extend(stats.episode_latency)
        merged.episodes = len(trajs)
        merged.wall_time = time.perf_counter() - t0
        return trajs, merged

    def _poll_s(self) -> float:
        """How often a waiting rollout asks its busy workers whether they still make progress."""
        return min(self.timeout, POLL_S)

    def _check_progress(self, busy: list[int]) -> None:
        """Raise TimeoutError when a busy worker has gone `rollout_timeout` seconds without finishing a generation
        (or does not answer): a hang, not a slow chunk; a long chunk that keeps generating may take any time."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        for w in busy:
            try:
                idle = ray.get(self.workers[w].idle_seconds.remote(), timeout=self._poll_s())
            except (ActorUnavailableError, RayActorError):
                continue  # a dead worker: its pending chunk fails next and is re-run
            except GetTimeoutError:
                idle = float("inf")  # every actor thread is stuck: as hung as it gets
            if idle > self.timeout:
                raise TimeoutError(f"rollout worker {w} finished no generation for {idle:.0f}s "
                                   f"(> rollout.rollout_timeout {self.timeout:.0f}s): it is hung. A slow chunk that "
                                   f"keeps generating is never stopped by this; `memrl train --resume` keeps the "
                                   f"finished sweep points and checkpoints")

    def _await_restart(self, w: int) -> None:
        """Block until Ray has restarted worker `w` (bounded by the rollout timeout)."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                ray.get(self.workers[w].ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except (ActorUnavailableError, RayActorError, GetTimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rollout worker {w} did not come back within {self.timeout:.0f}s") from exc
                time.sleep(1.0)

    def shutdown(self) -> None:
        """Stop every engine, then the actors (ray.kill alone would orphan the engine processes)."""
        import ray

        try:
            ray.get([w.close.remote() for w in self.workers], timeout=60)
        except Exception as exc:  # a dead or hung worker must not block the shutdown of the others
            log.warning("rollout worker shutdown: %s", exc)
        for w in self.workers:
            ray.kill(w)
        self.workers = []
