"""Rollout throughput: memrl's multi-turn rollout path vs one raw `vllm.LLM.generate` call, same engine.

(a) memrl: N concurrent episodes x T turns through the agent, parser and env, streamed into the engine
    (continuous batching, env steps in threads) -- and, for contrast, the turn-synchronous schedule;
(b) raw: every (prompt, completion length) pair that (a) produced, submitted as ONE generate call on the same engine with exactly the same token budget (min_tokens = max_tokens =
    what (a) sampled). (b) is an upper bound: it sees all turns at once. Prints tokens/s of each, the
    ratio, and the mean |vLLM log-prob - HF recomputed log-prob| of sampled tokens.

    python -m memrl.bench.rollout --model smollm2-135m-instruct --episodes 64 --turns 3
"""

from __future__ import annotations

import argparse
import time

import torch

from memrl.agents import SamplingConfig, VLLMBackend, make_agent, run_episodes
from memrl.agents.episode import backend_policy, streaming_policy
from memrl.bench.common import machine
from memrl.models import load_model, resolve_model_dir
from memrl.recipes.schema import AgentCfg, RolloutCfg
from memrl.rl.losses import token_logprobs
from memrl.testing import LettersEnv


def raw_generate(backend: VLLMBackend, prompts: list[list[int]], lengths: list[int]) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [SamplingParams(max_tokens=n, min_tokens=n, temperature=1.0, ignore_eos=True) for n in lengths]
    t0 = time.perf_counter()
    outs = backend.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    dt = time.perf_counter() - t0
    assert sum(len(o.outputs[0].token_ids) for o in outs) == sum(lengths)
    return dt


def logprob_gap(model_dir, trajs, limit: int = 16) -> float:
    """Mean |engine log-prob - HF log-prob| over the sampled tokens of the first context of the first
    `limit` trajectories, the HF ones recomputed with one forward pass of the model at `model_dir`."""
    model = load_model(model_dir)
    diffs = []
    for t in trajs[:limit]:
        ctx = t.contexts[0]
        ids = torch.tensor([ctx.token_ids])
        with torch.no_grad():
            lp = token_logprobs(model(input_ids=ids).logits.float(), ids)[0]
        mask = torch.tensor(ctx.loss_mask, dtype=torch.bool)
        diffs.append((lp[mask] - torch.tensor(ctx.logprobs)[mask]).abs())
    return float(torch.cat(diffs).mean())


class Recording:
    """Our production path (the backend's streaming interface), recording every (prompt, sampled length)
    so the raw baseline gets exactly the same work."""

    def __init__(self, backend) -> None:
        self.backend, self.recorded, self.prompts = backend, [], {}

    def submit(self, key, prompt, cfg) -> None:
        self.prompts[key] = prompt
        self.backend.submit(key, prompt, cfg)

    def poll(self):
        done = self.backend.poll()
        self.recorded.extend((self.prompts.pop(k), len(g.token_ids)) for k, g in done)
        return done


class RecordingBatch:
    """The turn-synchronous schedule (one engine call per turn), recording the same way."""

    def __init__(self, backend) -> None:
        self.policy, self.recorded = backend_policy(backend), []

    def __call__(self, prompts, episodes, cfg):
        gens = self.policy(prompts, episodes, cfg)
        self.recorded.extend((p, len(g.token_ids)) for p, g in zip(prompts, gens, strict=True))
        return gens


def main(argv: list[str] | None = None, backend: VLLMBackend | None = None) -> dict:
    """`python -m memrl.bench.rollout`: LettersEnv episodes through memrl (streaming, then turn-synchronous),
    each replayed as one raw generate call of the same lengths; prints the table and returns the streaming
    tokens/s of both, their ratio, the turn-synchronous ratio and the log-prob gap (`logprob_gap`). `backend`
    reuses an already started engine holding --model's weights (tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--agent", default="memsearcher")
    args = ap.parse_args(argv)

    model_dir = resolve_model_dir(args.model)
    backend = backend or VLLMBackend(model_dir, rollout=RolloutCfg(max_model_len=2048, kv_cache_gib=2))
    agent = make_agent(backend.tokenizer, AgentCfg(name=args.agent, memory_tokens=64))
    envs = [LettersEnv(turns=args.turns) for _ in range(args.episodes)]
    cfg = SamplingConfig(max_tokens=args.max_tokens, temperature=1.0)
    run_episodes(agent, envs[:4], range(4), streaming_policy(backend), cfg)  # warm-up
    rows, out = [], {}
    for schedule, policy in (("streaming", Recording(backend)), ("turn-synchronous", RecordingBatch(backend))):
        t0 = time.perf_counter()
        trajs = run_episodes(agent, envs, range(args.episodes), policy, cfg)
        t_ours = time.perf_counter() - t0
        tokens = sum(n for _, n in policy.recorded)
        t_raw = raw_generate(backend, [p for p, _ in policy.recorded], [n for _, n in policy.recorded])
        rows.append((schedule, t_ours, t_raw, tokens, len(policy.recorded)))
        if schedule == "streaming":
            out = {"ours_tok_s": tokens / t_ours, "raw_tok_s": tokens / t_raw, "ratio": t_raw / t_ours,
                   "generated_tokens": tokens, "generations": len(policy.recorded),
                   "logprob_mae": logprob_gap(model_dir, trajs)}
        else:
            out["turn_synchronous_ratio"] = t_raw / t_ours
    print(f"machine: {machine()}")
    print(f"{args.model}, agent {args.agent}, {args.episodes} concurrent episodes x {args.turns} turns, "
          f"<= {args.max_tokens} tokens per turn")
    print("| schedule | generations | tokens | memrl s | raw vLLM s | memrl tok/s | raw tok/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for schedule, t_ours, t_raw, tokens, gens in rows:
        print(f"| {schedule} | {gens} | {tokens} | {t_ours:.1f} | {t_raw:.1f} | {tokens / t_ours:.0f} | "
              f"{tokens / t_raw:.0f} | {t_raw / t_ours:.3f} |")
    print(f"ratio memrl / raw: {out['ratio']:.3f} (streaming, the production path); "
          f"turn-synchronous {out['turn_synchronous_ratio']:.3f}")
    gap = out["logprob_mae"]
    print(f"mean |vLLM - HF| sampled-token log-prob: {gap:.2e}")
    return out


if __name__ == "__main__":
    main()
