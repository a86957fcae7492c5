"""Run agents through episodes. Two schedules, one loop:

- streaming (a `StreamingPolicy`, e.g. a VLLMBackend): every episode moves on its own. Its next prompt
  joins the engine's running batch as soon as its env step returns (continuous batching), so a long
  generation or a slow retrieval of one episode never holds up the others, and env steps run in a
  thread pool while the engine decodes.
- turn-synchronous (a batch `Policy` callable: HF reference, oracle, test policies): every live
  episode generates in one call per turn, then all env steps run concurrently.

Fault rule (documented, tested): an env whose reset/step raises, hangs past `env_timeout` seconds or
returns a non-string observation ends only its own episode. That trajectory is kept with
`failed=True`, reward 0 and `info["error"]`; the trainer excludes failed trajectories from the loss
(their group baseline uses the others). An episode whose prompt fills the engine's context window
(a full-context agent on many objectives) ends as truncated with reward 0 and `info["context_full"]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np

from memrl.agents.backends import CONTEXT_FULL, Generation, SamplingConfig
from memrl.agents.base import Agent, EpisodeState
from memrl.records import Trajectory

log = logging.getLogger(__name__)

# (prompts, episode indices, sampling config) -> one Generation per prompt
Policy = Callable[[list[list[int]], list[int], SamplingConfig], list[Generation]]


@runtime_checkable
class StreamingPolicy(Protocol):
    """Continuous batching: queue prompts one at a time, advance the engine, collect finished ones."""

    def submit(self, key: int, prompt: list[int], cfg: SamplingConfig) -> None: ...

    def poll(self) -> list[tuple[int, Generation]]: ...


def sampling_seed(*keys: int) -> int:
    """A sampling seed for one request, mixed from integer keys (run seed, step, episode, turn, ...).

    Sampled rollouts are reproducible only if each request owns its random stream: with one engine-wide
    generator a request's draws depend on which others were batched with it, and that depends on timing
    (streaming, threaded env steps). Distinct keys give distinct, well-mixed 32-bit seeds."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def backend_policy(backend) -> Policy:
    """Adapt an HFBackend/VLLMBackend (anything with `generate(prompts, cfg)`) to a batch Policy."""
    return lambda prompts, episodes, cfg: backend.generate(prompts, cfg)


def streaming_policy(backend) -> StreamingPolicy | Policy:
    """The backend itself when it streams (VLLMBackend), else its batch Policy."""
    return backend if isinstance(backend, StreamingPolicy) else backend_policy(backend)


class _TurnBatch:
    """A batch Policy seen as a StreamingPolicy: `poll` generates everything submitted, in one call."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.queue = policy, []

    def submit(self, key: int, prompt: list[int], cfg: SamplingConfig) -> None:
        self.queue.append((key, prompt, cfg))

    def poll(self) -> list[tuple[int, Generation]]:
        """One policy call per distinct sampling config (per-request seeds make each prompt its own)."""
        queue, self.queue = self.queue, []
        out = []
        for cfg in dict.fromkeys(c for _, _, c in queue):
            part = [(k, p) for k, p, c in queue if c == cfg]
            gens = self.policy([p for _, p in part], [k for k, _ in part], cfg)
            out.extend((k, g) for (k, _), g in zip(part, gens, strict=True))
        return out


@dataclass
class _Episode:
    env: object
    state: EpisodeState | None = None
    reward: float = 0.0
    info: dict = field(default_factory=dict)
    done: bool = False
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # of the env call in flight
    turns: list[dict] = field(default_factory=list)  # per turn: what the model wrote, the action, the reply


def _turn_record(prompt: list[int], gen: Generation, parsed, observation: str | None, reward: float) -> dict:
    """One turn as a person reads it (the memory viewer): the model's text, its memory and action, the env's
    reply and reward, and the token counts of the context it saw and of what it wrote."""
    return {"completion": gen.text, "memory": parsed.memory, "action": parsed.action, "ok": parsed.ok,
            "observation": observation, "reward": float(reward), "prompt_tokens": len(prompt),
            "completion_tokens": len(gen.token_ids), "finish_reason": gen.finish_reason}


def run_episodes(
    agent: Agent,
    envs: Sequence,
    seeds: Sequence[int],
    policy: Policy | StreamingPolicy,
    sampling: SamplingConfig,
    group_ids: Sequence[int] | None = None,
    env_timeout: float = 60.0,
    max_threads: int = 16,
    weight_version: int = 0,
    on_turn: Callable[[int, int], None] | None = None,
    sample_seeds: Sequence[int] | None = None,
) -> list[Trajectory]:
    """Play one episode per env (reset with its seed) and return one Trajectory each, in order.

    `sample_seeds` (one per episode) gives every turn of an episode its own sampling seed,
    `sampling_seed(sample_seeds[i], turn)`, so sampled episodes repeat whatever else runs beside them;
    without it every request uses `sampling.seed`. `on_turn(turns, tokens)` is called whenever
    generations finish (how many, how many tokens)."""
    if sample_seeds is not None and len(sample_seeds) != len(envs):
        raise ValueError(f"{len(sample_seeds)} sample_seeds for {len(envs)} episodes")
    streaming = isinstance(policy, StreamingPolicy)
    engine = policy if streaming else _TurnBatch(policy)
    episodes = [_Episode(env) for env in envs]
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_threads, len(envs))))
    try:
        resets = {pool.submit(e.reset, seed=int(s)): i for i, (e, s) in enumerate(zip(envs, seeds, strict=True))}
        for _, i, out in _collect(resets, episodes, env_timeout, wait_all=True):
            if out is not None:
                _on_reset(agent, episodes[i], out)
        ready = [i for i, ep in enumerate(episodes) if not ep.done]
        prompts: dict[int, list[int]] = {}  # episodes generating -> their prompt
        steps: dict = {}  # env step futures -> (episode, prompt, generation, parsed)
        while ready or prompts or steps:
            for i in ready:
                state = episodes[i].state
                prompts[i] = agent.context_ids(state)
                seed = sampling.seed if sample_seeds is None else sampling_seed(sample_seeds[i], len(episodes[i].turns))
                engine.submit(i, prompts[i], _turn_config(sampling, agent.stop_strings(state), seed))
            ready = []
            finished = engine.poll() if prompts else []
            if finished and on_turn:
                on_turn(len(finished), sum(len(g.token_ids) for _, g in finished))
            for i, gen in finished:
                ep, prompt = episodes[i], prompts.pop(i)
                parsed = agent.parse(gen.text, ep.state)
                if gen.finish_reason == CONTEXT_FULL:  # no room left to answer: ends like running out of turns
                    ep.done = True
                    ep.info.update(terminated=False, truncated=True, context_full=True, **_unanswered(ep.info))
                    ep.turns.append(_turn_record(prompt, gen, parsed, None, 0.0))
                    agent.update(ep.state, prompt, gen, parsed, None)
                    _finish(ep)
                    continue
                fut = pool.submit(ep.env.step, parsed.action)
                steps[fut] = (i, prompt, gen, parsed)
                ep.deadline = time.monotonic() + env_timeout
            # streaming: take the env steps that are done and go on decoding; turn batch: wait for all
            block = not streaming or not prompts
            futs = {f: v[0] for f, v in steps.items()}
            for fut, i, out in _collect(futs, episodes, env_timeout, wait_all=not streaming, block=block):
                _, prompt, gen, parsed = steps.pop(fut)
                ep = episodes[i]
                obs, reward = None, 0.0
                if out is not None:
                    obs, reward, terminated, truncated, info = out
                    ep.reward += float(reward)
                    ep.info.update(info)
                    ep.done = bool(terminated or truncated)
                    ep.info["terminated"], ep.info["truncated"] = bool(terminated), bool(truncated)
                ep.turns.append(_turn_record(prompt, gen, parsed, obs, reward))
                agent.update(ep.state, prompt, gen, parsed, None if ep.done else obs)
                if agent.memory_tag:  # what the agent carries into the next prompt (cut to memory_tokens)
                    ep.turns[-1]["memory_kept"] = ep.state.memory
                if ep.done:
                    _finish(ep)
                else:
                    ready.append(i)
    finally:  # never wait for an env call that timed out: a hung tool must not hang the rollout
        pool.shutdown(wait=False, cancel_futures=True)
    groups = group_ids if group_ids is not None else list(range(len(envs)))
    return [_trajectory(ep, g, weight_version) for ep, g in zip(episodes, groups, strict=True)]


def _turn_config(sampling: SamplingConfig, stop: tuple[str, ...], seed: int | None) -> SamplingConfig:
    return replace(sampling, stop=tuple(dict.fromkeys([*sampling.stop, *stop])), seed=seed)


def _collect(futures: dict, episodes: list[_Episode], timeout: float, wait_all: bool, block: bool = True):
    """Yield (future, episode index, output or None) for env calls that finished, failed or ran out of time.

    A failed call marks its episode failed and yields None. `block=False` only takes what is done now;
    otherwise waits for the first one (or all, `wait_all`), each call bounded by its episode deadline."""
    if not futures:
        return
    now = time.monotonic()
    deadline = min(episodes[i].deadline or now + timeout for i in futures.values())
    wait_for = max(0.0, deadline - now) if block else 0.0
    done, _ = wait(list(futures), timeout=wait_for, return_when=ALL_COMPLETED if wait_all else FIRST_COMPLETED)
    now = time.monotonic()
    for fut, i in futures.items():
        ep = episodes[i]
        if fut in done:
            try:
                out = fut.result()
                _check_output(out)
            except Exception as exc:  # an env bug ends its episode, never the run
                _fail(ep, f"{type(exc).__name__}: {exc}")
                out = None
            yield fut, i, out
        elif now >= (ep.deadline or deadline):
            _fail(ep, f"env call timed out after {timeout:.0f}s")
            yield fut, i, None


def _unanswered(info: dict) -> dict:
    """The scores of an episode the env did not get to end (its context filled): every objective unanswered, as
    the env scores running out of turns (so the evals and `agents.audit` count its objectives)."""
    n = len(info.get("objectives") or [])
    if not n:
        return {}
    zeros = [0.0] * n
    return {"objective_em": zeros, "objective_f1": list(zeros), "objective_rewards": list(zeros), "em": 0.0,
            "f1": 0.0, "format_reward": 0.0}


def _finish(ep: _Episode) -> None:
    ep.info.setdefault("episode_seconds", time.monotonic() - ep.started)


def _check_output(out) -> None:
    if not isinstance(out, tuple) or not isinstance(out[0], str):
        raise TypeError(f"env returned a non-string observation: {type(out[0] if isinstance(out, tuple) else out)}")


def _fail(ep: _Episode, message: str) -> None:
    log.warning("episode failed: %s", message)
    ep.error, ep.done, ep.reward = message, True, 0.0
    _finish(ep)


def _on_reset(agent: Agent, ep: _Episode, out) -> None:
    obs, info = out
    ep.state = agent.start(obs, info)
    ep.info = dict(info)


def _trajectory(ep: _Episode, group_id: int, version: int) -> Trajectory:
    state = ep.state
    info = {k: v for k, v in ep.info.items() if k in _KEEP}
    if state is not None:
        info.update(state.stats.as_dict())
        info.update(turns=state.turn, parse_failures=state.parse_failures, format_errors=state.format_errors,
                    memory=state.memory)
    info["error"] = ep.error
    # generations that ran into max_tokens before a stop string: a memory that never closes (a repetition loop)
    info["length_stops"] = sum(t["finish_reason"] == "length" for t in ep.turns)
    info["turn_log"] = ep.turns
    return Trajectory(contexts=state.contexts if state else [], reward=0.0 if ep.error else ep.reward,
                      group_id=int(group_id), weight_version=version, failed=ep.error is not None, info=info)


_KEEP = {"em", "f1", "objective_rewards", "objective_em", "objective_f1", "format_reward", "answers", "chains",
         "objectives", "terminated", "truncated", "turn", "invalid_action", "context_full", "episode_seconds"}


def oracle_policy(agent: Agent, envs: Sequence) -> Policy:
    """A Policy that writes the env's gold steps in the agent's format (for SFT warm starts and tests)."""
    plans: dict[int, list] = {}
    turns: dict[int, int] = {}

    def generate(prompts: list[list[int]], episodes: list[int], cfg: SamplingConfig) -> list[Generation]:
        out = []
        for e in episodes:
            if e not in plans:
                plans[e] = envs[e].unwrapped.oracle_steps()
            steps = plans[e]
            step = steps[min(turns.get(e, 0), len(steps) - 1)]
            turns[e] = turns.get(e, 0) + 1
            text = agent.gold_completion(step.note, step.action)
            ids = agent.encode(text)
            out.append(Generation(ids, [0.0] * len(ids), text, "stop"))
        return out

    return generate
