"""Rollout throughput: memrl's multi-turn rollout path vs one raw `vllm.LLM.generate` call, same engine.

(a) memrl: N concurrent episodes x T turns through the agent, parser and env (turn-batched, env steps
    in threads); (b) raw: every (prompt, completion length) pair that (a) produced, submitted as ONE
    generate call on the same engine with exactly the same token budget (min_tokens = max_tokens =
    what (a) sampled). (b) is an upper bound: it sees all turns at once. Prints tokens/s of each, the
    ratio, and the mean |vLLM log-prob - HF recomputed log-prob| of sampled tokens.

    python -m memrl.bench.rollout --model smollm2-135m-instruct --episodes 64 --turns 3
"""

from __future__ import annotations

import argparse
import time

import torch

from memrl.agents import SamplingConfig, VLLMBackend, make_agent, run_episodes
from memrl.agents.episode import backend_policy
from memrl.bench.common import machine
from memrl.models import load_model, resolve_model_dir
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--agent", default="memsearcher")
    args = ap.parse_args(argv)

    model_dir = resolve_model_dir(args.model)
    backend = VLLMBackend(model_dir, max_model_len=2048, kv_cache_gib=2)
    agent = make_agent(args.agent, backend.tokenizer, memory_tokens=64)
    envs = [LettersEnv(turns=args.turns) for _ in range(args.episodes)]
    recorded: list[tuple[list[int], int]] = []
    policy = backend_policy(backend)

    def recording_policy(prompts, episodes, cfg):
        gens = policy(prompts, episodes, cfg)
        recorded.extend((p, len(g.token_ids)) for p, g in zip(prompts, gens, strict=True))
        return gens

    cfg = SamplingConfig(max_tokens=args.max_tokens, temperature=1.0)
    run_episodes(agent, envs[:4], range(4), policy, cfg)  # warm-up
    t0 = time.perf_counter()
    trajs = run_episodes(agent, envs, range(args.episodes), recording_policy, cfg)
    t_ours = time.perf_counter() - t0
    tokens = sum(n for _, n in recorded)
    t_raw = raw_generate(backend, [p for p, _ in recorded], [n for _, n in recorded])
    gap = logprob_gap(model_dir, trajs)
    out = {"ours_tok_s": tokens / t_ours, "raw_tok_s": tokens / t_raw, "ratio": t_raw / t_ours,
           "generated_tokens": tokens, "generations": len(recorded), "logprob_mae": gap}
    print(f"machine: {machine()}")
    print(f"{args.model}, agent {args.agent}, {args.episodes} concurrent episodes x {args.turns} turns, "
          f"<= {args.max_tokens} tokens per turn, {tokens} generated tokens in {len(recorded)} generations")
    print("| path | seconds | generated tokens/s |\n|---|---|---|")
    print(f"| memrl multi-turn rollout | {t_ours:.1f} | {out['ours_tok_s']:.0f} |")
    print(f"| raw vLLM generate, one call | {t_raw:.1f} | {out['raw_tok_s']:.0f} |")
    print(f"ratio memrl / raw: {out['ratio']:.3f}")
    print(f"mean |vLLM - HF| sampled-token log-prob: {gap:.2e}")
    return out


if __name__ == "__main__":
    main()
