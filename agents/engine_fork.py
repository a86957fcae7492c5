"""Start a CPU engine's worker process by fork, not spawn, when the engine lives in a Ray actor.

Vendor behaviour (vLLM 0.32, vllm/utils/system_utils.py `_maybe_force_spawn`): inside a Ray actor vLLM sets
VLLM_WORKER_MULTIPROC_METHOD=spawn in the actor's environment before it starts the EngineCore process. Spawning the
core is needed (forking a Ray worker, with its gRPC threads, is unsafe), but the core inherits the variable and, on
CPU (the platform always uses the multiprocess executor there, vllm/platforms/cpu.py), spawns its own model worker
too: a second fresh interpreter that imports torch and vLLM again before the engine can load the model. The core
is a clean vLLM process, not a Ray worker, and outside Ray vLLM forks the worker from it by default; so this
executor (the multiprocess one, nothing else changed) forks it there as well. `memrl.device` uses it on CPU only.

tests/agents/test_engine_fork.py checks that a plain engine in a Ray actor still spawns its worker (drop this module
when that stops being true) and that an engine of ours forks it.
"""

from __future__ import annotations

import os

from vllm.ray.lazy_utils import is_in_ray_actor
from vllm.v1.executor.multiproc_executor import MultiprocExecutor


class ForkWorkerExecutor(MultiprocExecutor):
    """vLLM's multiprocess executor, with its workers forked from the engine core unless the core itself runs in a
    Ray actor (the in-process engine core), where vLLM's spawn stays."""

    def _init_executor(self) -> None:
        if os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") == "spawn" and not is_in_ray_actor():
            os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"  # this process only: the Ray actor keeps spawn
        super()._init_executor()
