"""Weight sync: one protocol, backends behind it, and one owner of the weight version.

`WeightSync` (the driver's) owns the run's weight version. `sync()` makes the next version and commits it in every
engine through a `SyncBackend`, whose protocol is, for each version:

    init()            form or repair what the path needs (a transfer group); cheap when nothing is missing
    start(version)    before any weight moves (colocated engines wake up here: rl/placement.py)
    update(version)   move the weights into every engine
    finish(version)   after every engine committed `version` (serves it from here on)

An attempt that fails with a Ray error (an engine or rank died, a transfer timed out) is retried from `init` after
`reset()`, 3 attempts in all, then the run stops with the last error. The version advances only when an attempt
finishes, so the rest of the run (the trainer's metrics and checkpoints, the rollout manager's dispatch, a
restarted worker's catch-up) reads one number: `WeightSync.version`.

Backends (`memrl.registry.WEIGHT_SYNCS`, `rollout.weight_sync`; add one with `register_weight_sync` in a
`plugins` module):

- `native` (default): vLLM's weight-transfer protocol. Learner rank 0 opens a transfer group with every engine
  worker (`memrl_gloo` on CPU, vLLM's `nccl` on GPU: `memrl.device`) and streams the weights layer group by layer
  group from a `memrl.weight_transfer.LearnerSource` (ZeRO-3: each group gathered on its own, so no rank ever holds
  a full copy); the engines load each group as it arrives. The engines' own start / update / finish are driven by
  rank 0's trainer engine (vLLM's split); the driver starts it and waits.
- `blob` (fallback): rank 0 serialises the whole model to one safetensors blob that Ray copies to every engine
  (`memrl.weight_sync`). A worker restarted by Ray mid-rollout also catches up this way (`RolloutManager`), since
  it is not in the transfer group until the next sync re-forms it.
- `adapter` (`learner.lora_rank` > 0): only the LoRA adapter travels, as one small blob the engines hot-load as a
  new LoRARequest (`memrl.lora`). A LoRA run uses it whatever `rollout.weight_sync` says of the built-in full-weight
  paths (`backend_name`), since those move full weights.
"""

from __future__ import annotations

import logging
import time

from memrl import registry

log = logging.getLogger(__name__)

ATTEMPTS = 3


def register_weight_sync(name: str):
    """Decorator: register a `SyncBackend` subclass as `rollout.weight_sync: <name>`."""
    return registry.WEIGHT_SYNCS.register(name)


class SyncBackend:
    """One way to move the learner's weights into the engines (see the module docstring for the protocol).

    `learner` is the `LearnerGroup`, `rollouts` the `RolloutManager`; `timeout` (`rollout.sync_timeout`) bounds
    every call a backend waits on. A backend holds no version of its own: each call is told which one."""

    def __init__(self, learner, rollouts, timeout: float) -> None:
        self.learner, self.rollouts, self.timeout = learner, rollouts, timeout

    def init(self) -> None:
        """Form or repair what the path needs; called before every attempt."""

    def start(self, version: int) -> None:
        """Before any weight of `version` moves: colocated engines wake up (`rl.placement`; a no-op otherwise).
        A subclass that overrides it calls it too."""
        self.rollouts.wake()

    def update(self, version: int) -> None:
        """Put the learner's current weights into every engine as `version` (committed there)."""
        raise NotImplementedError

    def finish(self, version: int) -> None:
        """After every engine holds `version`."""

    def reset(self) -> None:
        """After a failed attempt: forget what was formed, so that `init` forms it again."""

    def close(self) -> None:
        """Release what `init` formed (the run is ending)."""


class NativeSync(SyncBackend):
    """vLLM's weight-transfer protocol, streamed by learner rank 0 (module docstring). The transfer group is
    formed on first use and re-formed when an engine is not in it (a worker restarted by Ray comes back without
    it) or after a failed attempt (a peer died mid-broadcast)."""

    def __init__(self, learner, rollouts, timeout: float) -> None:
        super().__init__(learner, rollouts, timeout)
        self.epoch = 0  # transfer groups formed so far; every engine in the current one reports this number
        self.formed = False

    def init(self) -> None:
        if self.formed and all(e == self.epoch for e in self.rollouts.transfer_epochs()):
            return
        self.rollouts.leave_transfer()
        self.learner.leave_transfer()
        self.epoch += 1
        self.learner.join_transfer(self.rollouts.workers, self.rollouts.workers_per_engine, self.timeout)
        self.rollouts.mark_transfer_epoch(self.epoch)
        self.formed = True
        log.info("weight transfer group %d formed: learner rank 0 + %d engine(s)", self.epoch,
                 len(self.rollouts.workers))

    def update(self, version: int) -> None:
        self.learner.send_weights(version)

    def reset(self) -> None:
        self.formed = False

    def close(self) -> None:
        self.learner.leave_transfer()  # the engines' side goes with them (RolloutManager.shutdown)


class BlobSync(SyncBackend):
    """The whole model as one safetensors blob, made on rank 0 and loaded by every engine (module docstring)."""

    def update(self, version: int) -> None:
        self.rollouts.load_blob(self.learner.weights_blob(), version)


class AdapterSync(BlobSync):
    """LoRA: the learner's blob is its adapter (`Learner.weights_blob` under `learner.lora_rank`), which the
    engines hot-load (`VLLMBackend.load_blob`); the base weights never move."""


def backend_name(weight_sync: str, lora_rank: int) -> str:
    """The backend a run uses: `adapter` for a LoRA run whose `rollout.weight_sync` is a built-in full-weight path
    (they would move the merged weights the engines do not hold), else `rollout.weight_sync`."""
    return "adapter" if lora_rank and weight_sync in ("native", "blob") else weight_sync


class WeightSync:
    """The owner of the run's weight version; `sync()` commits the next one in every engine through `backend`
    (a registered name, or a SyncBackend)."""

    def __init__(self, learner, rollouts, backend: str | SyncBackend, timeout: float) -> None:
        if isinstance(backend, str):
            cls = registry.WEIGHT_SYNCS.get(backend)
            if not (isinstance(cls, type) and issubclass(cls, SyncBackend)):
                raise TypeError(f"weight sync {backend!r} is {cls!r}, not a memrl.rl.sync.SyncBackend subclass")
            backend = cls(learner, rollouts, timeout)
        self.backend, self.rollouts = backend, rollouts
        self._version = 0
        rollouts.versions = self  # the manager dispatches at (and catches restarted workers up to) this version

    @property
    def version(self) -> int:
        """The version every engine holds (the last committed)."""
        return self._version

    def restore(self, version: int) -> None:
        """A resumed run's last version (from its checkpoint), before its first sync; the next sync commits
        `version + 1` (the engines start at the model's initial weights, so that sync is a full one)."""
        self._version = version

    def sync(self) -> float:
        """Commit the next version in every engine; returns the seconds taken."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        version = self._version + 1
        t0 = time.perf_counter()
        for attempt in range(ATTEMPTS):
            try:
                self.backend.init()
                self.backend.start(version)
                self.backend.update(version)
                self.backend.finish(version)
                break
            except (RayActorError, ActorUnavailableError, GetTimeoutError, ray.exceptions.RayTaskError) as exc:
                if attempt == ATTEMPTS - 1:
                    raise RuntimeError(f"weight sync v{version} failed {ATTEMPTS} times; last error: {exc}") from exc
                log.warning("weight sync v%d failed (%s); retrying from init", version, type(exc).__name__)
                self.backend.reset()
                self.rollouts.await_all()
        self._version = version
        return time.perf_counter() - t0

    def close(self) -> None:
        self.backend.close()
