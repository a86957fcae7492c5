"""Weight sync as the driver sees it: `WeightSync.sync(version)`.

Every sync commits a new weight version in every engine. Two paths, one interface:

- `native` (default): vLLM's weight-transfer protocol. Learner rank 0 opens a transfer group with every engine
  worker (`memrl_gloo` on CPU, vLLM's `nccl` on GPU: `memrl.device`) and streams the weights layer group by
  layer group from a `memrl.weight_transfer.LearnerSource` (ZeRO-3: each group gathered on its own, so no rank ever holds a full
  copy); the engines load each group as it arrives. The driver only starts it and waits.
- `blob` (fallback, `rollout.weight_sync: blob`): rank 0 serialises the whole model to one safetensors blob
  that Ray copies to every engine (`memrl.weight_sync`). A worker restarted by Ray mid-rollout also catches
  up this way (`RolloutManager`), since it is not in the transfer group until the next sync re-forms it.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class WeightSync:
    """The driver's view of weight sync: `sync(version)` puts the learner's current weights in every engine.

    Native path: the transfer group is formed on first use and re-formed when an engine is not in it (a worker
    restarted by Ray comes back without it) or when a transfer failed (a peer died mid-broadcast); a sync is
    tried 3 times before it fails."""

    def __init__(self, learner, rollouts, mode: str, timeout: float) -> None:
        self.learner, self.rollouts, self.mode, self.timeout = learner, rollouts, mode, timeout
        self.epoch = 0  # transfer groups formed so far; every engine in the current one reports this number
        self.formed = False

    def sync(self, version: int) -> float:
        """Seconds taken to commit `version` in every engine."""
        t0 = time.perf_counter()
        if self.mode == "blob":
            self.rollouts.sync(self.learner.weights_blob(), version)
            return time.perf_counter() - t0
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        for attempt in range(3):
            try:
                self._ensure_group()
                self.learner.send_weights(version)
                break
            except (RayActorError, ActorUnavailableError, GetTimeoutError, ray.exceptions.RayTaskError) as exc:
                if attempt == 2:
                    raise RuntimeError(f"weight sync v{version} failed 3 times; last error: {exc}") from exc
                log.warning("weight sync v%d failed (%s); re-forming the transfer group", version, type(exc).__name__)
                self.formed = False
                self.rollouts.await_all()
        self.rollouts.version = version
        return time.perf_counter() - t0

    def _ensure_group(self) -> None:
        epochs = self.rollouts.transfer_epochs()
        if self.formed and all(e == self.epoch for e in epochs):
            return
        self.rollouts.leave_transfer()
        self.learner.leave_transfer()
        self.epoch += 1
        self.learner.join_transfer(self.rollouts.workers, self.rollouts.workers_per_engine, self.timeout)
        self.rollouts.mark_transfer_epoch(self.epoch)
        self.formed = True
        log.info("weight transfer group %d formed: learner rank 0 + %d engine(s)", self.epoch,
                 len(self.rollouts.workers))
