"""Run agents through episodes, turn-synchronously batched: every live episode generates in one engine
call per turn, then all env steps run concurrently in a thread pool (retrieval waits overlap).

Fault rule (documented, tested): an env whose reset/step raises, hangs past `env_timeout` seconds or
returns a non-string observation ends only its own episode. That trajectory is kept with
`failed=True`, reward 0 and `info["error"]`; the trainer excludes failed trajectories from the loss
(their group baseline uses the others). An episode whose prompt fills the engine's context window
(a full-context agent on many objectives) ends as truncated with reward 0 and `info["context_full"]`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from memrl.agents.backends import CONTEXT_FULL, Generation, SamplingConfig
from memrl.agents.base import Agent, EpisodeState
from memrl.rl.trajectory import Trajectory

log = logging.getLogger(__name__)

# (prompts, episode indices, sampling config) -> one Generation per prompt
Policy = Callable[[list[list[int]], list[int], SamplingConfig], list[Generation]]


def backend_policy(backend) -> Policy:
    """Adapt an HFBackend/VLLMBackend (anything with `generate(prompts, cfg)`) to a Policy."""
    return lambda prompts, episodes, cfg: backend.generate(prompts, cfg)


@dataclass
class _Episode:
    env: object
    state: EpisodeState | None = None
    reward: float = 0.0
    info: dict = field(default_factory=dict)
    done: bool = False
    error: str | None = None


def run_episodes(
    agent: Agent,
    envs: Sequence,
    seeds: Sequence[int],
    policy: Policy,
    sampling: SamplingConfig,
    group_ids: Sequence[int] | None = None,
    env_timeout: float = 60.0,
    max_threads: int = 16,
    weight_version: int = 0,
    on_turn: Callable[[int, int], None] | None = None,
) -> list[Trajectory]:
    """Play one episode per env (reset with its seed) and return one Trajectory each, in order."""
    episodes = [_Episode(env) for env in envs]
    with ThreadPoolExecutor(max_workers=max(1, min(max_threads, len(envs)))) as pool:
        _call_envs(pool, episodes, [(lambda e=e, s=s: e.reset(seed=int(s))) for e, s in zip(envs, seeds, strict=True)],
                   env_timeout, lambda ep, out: _on_reset(agent, ep, out))
        while live := [i for i, ep in enumerate(episodes) if not ep.done]:
            prompts = [agent.context_ids(episodes[i].state) for i in live]
            stop = agent.stop_strings(episodes[live[0]].state)
            cfg = SamplingConfig(sampling.max_tokens, sampling.temperature, sampling.top_p,
                                 tuple(dict.fromkeys([*sampling.stop, *stop])), sampling.seed)
            gens = policy(prompts, live, cfg)
            parsed = [agent.parse(g.text, episodes[i].state) for i, g in zip(live, gens, strict=True)]
            stepping = [(i, p) for i, p, g in zip(live, parsed, gens, strict=True) if g.finish_reason != CONTEXT_FULL]
            calls = [(lambda e=episodes[i].env, a=p.action: e.step(a)) for i, p in stepping]
            outs: dict[int, tuple] = {}
            _call_envs(pool, [episodes[i] for i, _ in stepping], calls, env_timeout,
                       lambda ep, out, box=outs: box.__setitem__(id(ep), out))
            for i, prompt, gen, p in zip(live, prompts, gens, parsed, strict=True):
                ep = episodes[i]
                out = outs.get(id(ep))
                obs = None
                if gen.finish_reason == CONTEXT_FULL:  # no room left to answer: ends like running out of turns
                    ep.done = True
                    ep.info.update(terminated=False, truncated=True, context_full=True)
                elif out is not None:
                    obs, reward, terminated, truncated, info = out
                    ep.reward += float(reward)
                    ep.info.update(info)
                    ep.done = bool(terminated or truncated)
                    ep.info["terminated"], ep.info["truncated"] = bool(terminated), bool(truncated)
                agent.update(ep.state, prompt, gen, p, None if ep.done else obs)
            if on_turn:
                on_turn(len(live), sum(len(g.token_ids) for g in gens))
    groups = group_ids if group_ids is not None else list(range(len(envs)))
    return [_trajectory(ep, g, weight_version) for ep, g in zip(episodes, groups, strict=True)]


def _call_envs(pool, episodes, calls, timeout, on_ok) -> None:
    futures = [pool.submit(c) for c in calls]
    for ep, fut in zip(episodes, futures, strict=True):
        try:
            out = fut.result(timeout=timeout)
            _check_output(out)
            on_ok(ep, out)
        except FutureTimeout:
            _fail(ep, f"env call timed out after {timeout:.0f}s")
        except Exception as exc:  # an env bug ends its episode, never the run
            _fail(ep, f"{type(exc).__name__}: {exc}")


def _check_output(out) -> None:
    if not isinstance(out, tuple) or not isinstance(out[0], str):
        raise TypeError(f"env returned a non-string observation: {type(out[0] if isinstance(out, tuple) else out)}")


def _fail(ep: _Episode, message: str) -> None:
    log.warning("episode failed: %s", message)
    ep.error, ep.done, ep.reward = message, True, 0.0


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
    return Trajectory(contexts=state.contexts if state else [], reward=0.0 if ep.error else ep.reward,
                      group_id=int(group_id), weight_version=version, failed=ep.error is not None, info=info)


_KEEP = {"em", "f1", "objective_rewards", "objective_em", "objective_f1", "format_reward", "answers",
         "objectives", "terminated", "truncated", "turn", "invalid_action", "context_full"}


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
