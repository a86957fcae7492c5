"""Peak context tokens and peak KV-cache memory vs the number of composed objectives (MEM1's headline).

The same held-out KB tasks, composed N = 1, 2, 4, 8, 16 times, are played by the mem1, memsearcher
and full_context agents. By default each agent follows the env's gold trajectory written in its own
format (`oracle_policy`): the curves are those of an agent that solves every task, so they isolate
what the *agent design* does to the context, independent of model quality. `--policy model` plays
the episodes with a real model (greedy, vLLM) instead.

Peak KV-cache memory of an episode = peak context tokens x 2 (K and V) x layers x KV heads x head_dim
x bytes per element, from the model's config (what a paged-attention engine must hold for that
sequence).

    python -m bench.memory_scaling [--objectives 1,2,4,8,16] [--tasks 8] [--policy oracle|model]
"""

from __future__ import annotations

import argparse
import json

from memrl.agents import SamplingConfig, VLLMBackend, backend_policy, make_agent, oracle_policy, run_episodes
from memrl.agents.evaluate import episode_em
from memrl.bench.common import machine
from memrl.envs import build as build_env
from memrl.models import load_tokenizer, resolve_model_dir
from memrl.recipes.schema import AgentCfg, EnvCfg, RolloutCfg

AGENTS = ("mem1", "memsearcher", "full_context")


def kv_bytes_per_token(model_dir) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv_heads = cfg.get("num_key_value_heads", heads)
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * 4  # fp32 on CPU


def measure(agent_name: str, n: int, tasks: int, tokenizer, policy_kind: str, backend, env_kwargs: dict,
            max_tokens: int) -> dict:
    """Play `tasks` held-out episodes (split eval, seeds 10_000_000 + i) of `n` composed KB objectives (`env_kwargs`) with agent
    `agent_name`, following the oracle (`policy_kind` "oracle") or `backend` (greedy, `max_tokens` per turn);
    returns the row: mean and max peak context tokens, mean EM and mean turns."""
    agent = make_agent(tokenizer, AgentCfg(name=agent_name, max_observation_tokens=256, memory_tokens=256))
    envs = [build_env(EnvCfg(kwargs=env_kwargs).at(n, held_out=True)) for _ in range(tasks)]  # split eval
    policy = oracle_policy(agent, envs) if policy_kind == "oracle" else backend_policy(backend)
    cfg = SamplingConfig(max_tokens=10**6 if policy_kind == "oracle" else max_tokens, temperature=0.0)
    trajs = run_episodes(agent, envs, [10_000_000 + i for i in range(tasks)], policy, cfg)
    peaks = [t.info["peak_context_tokens"] for t in trajs]
    return {"agent": agent_name, "objectives": n, "peak_tokens": sum(peaks) / len(peaks), "max_peak": max(peaks),
            "em": sum(episode_em(t.info) for t in trajs) / len(trajs),
            "turns": sum(t.info["turns"] for t in trajs) / len(trajs)}


def main(argv: list[str] | None = None) -> list[dict]:
    """`python -m bench.memory_scaling`: `measure` every agent at every `--objectives` N, print the table
    with peak KV-cache MiB (fp32) and the mem1 and memsearcher / full_context ratios at the largest N, and
    return the rows (each with `peak_kv_mib` added)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="tokenizer (and model for --policy model)")
    ap.add_argument("--objectives", default="1,2,4,8,16")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--hops", type=int, default=2)
    ap.add_argument("--policy", choices=("oracle", "model"), default="oracle")
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    tokenizer = load_tokenizer(model_dir)
    per_token = kv_bytes_per_token(model_dir)
    backend = VLLMBackend(str(model_dir), rollout=RolloutCfg(max_model_len=32768)) if args.policy == "model" else None
    env_kwargs = {"min_hops": args.hops, "max_hops": args.hops}
    rows = [measure(a, int(n), args.tasks, tokenizer, args.policy, backend, env_kwargs, args.max_tokens)
            for n in args.objectives.split(",") for a in AGENTS]
    print(f"machine: {machine()}")
    print(f"{args.model}, KB tasks with {args.hops} hops, {args.tasks} tasks per point, policy: {args.policy}; "
          f"KV cache {per_token / 1024:.1f} KiB per token (fp32)")
    print("| objectives | agent | mean peak context tokens | max peak | peak KV cache (MiB) | mean turns | EM |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["peak_kv_mib"] = r["peak_tokens"] * per_token / 2**20
        print(f"| {r['objectives']} | {r['agent']} | {r['peak_tokens']:.0f} | {r['max_peak']} | "
              f"{r['peak_kv_mib']:.1f} | {r['turns']:.1f} | {r['em']:.2f} |")
    top = max(int(n) for n in args.objectives.split(","))
    by = {(r["agent"], r["objectives"]): r["peak_tokens"] for r in rows}
    for agent in ("mem1", "memsearcher"):
        print(f"ratio at N={top}: {agent} / full_context peak context = "
              f"{by[(agent, top)] / by[('full_context', top)]:.3f}")
    return rows


if __name__ == "__main__":
    main()
