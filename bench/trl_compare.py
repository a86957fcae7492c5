"""One GRPO step, memrl vs TRL's `GRPOTrainer`: same model, prompts, group size and token budget.

Each step samples G completions for each of P chat prompts, scores them (share of lowercase ASCII
letters, as `memrl.testing.LettersEnv`), computes group-normalized advantages and takes one AdamW step
(lr 1e-6, grad clip 1.0, PPO clip 0.2/0.28, token-mean loss, no KL) on all P x G completions. Every
completion is exactly N tokens (EOS suppressed on every path), so all paths do the same work.

    TRL:   `trainer.train()` for 2 steps, the second timed (callback); its step includes HF `generate`
           (batched, padded, KV cache), reward, advantages and forward + backward + AdamW.
    memrl: the same two steps, the second timed: generation with memrl's vLLM engine (and, with
           `--hf`, the reference `HFBackend`, one sequence at a time), reward, `grpo` advantages,
           `Learner.train_step` (DeepSpeed ZeRO-0). Engine start-up and model loading are excluded.

    python -m memrl.bench.trl_compare --model smollm2-135m-instruct --prompts 4 --group 4 --tokens 32
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import traceback

import torch

from memrl.agents import Generation, HFBackend, SamplingConfig
from memrl.bench.common import machine
from memrl.device import DTYPE_NAMES, plan
from memrl.models import load_model, load_tokenizer, resolve_model_dir
from memrl.recipes.schema import RolloutCfg
from memrl.records import Context, Trajectory
from memrl.rl.learner import Learner
from memrl.rl.losses import get_advantage_fn
from memrl.testing import learner_sections

LR, CLIP_LOW, CLIP_HIGH = 1e-6, 0.2, 0.28


def lowercase_share(text: str) -> float:
    """Reward: share of the characters that are lowercase ASCII letters (LettersEnv's score)."""
    return sum("a" <= c <= "z" for c in text) / max(1, len(text))


def chat_prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Task {i}: write a line of lowercase letters."}] for i in range(n)]


# ------------------------------------------------------------------------------------------ TRL


class _StepTimer:
    """A `TrainerCallback` recording the wall time of each optimizer step (generation included)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self
        self.seconds: list[float] = []

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.seconds.append(time.perf_counter() - timer._t0)

        self.callback = _Callback()


def run_trl(model_dir, messages: list[list[dict]], group: int, tokens: int, steps: int = 2, bf16: bool = False) -> dict:
    """`steps` GRPOTrainer steps on CPU (`bf16`: under its bf16 autocast, fp32 weights: the precision memrl's learner
    picks on CPUs with native bf16); returns the last step's seconds and its generated token count."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    generated: list[int] = []

    def reward(completions, completion_ids, **kwargs) -> list[float]:
        generated.append(sum(len(ids) for ids in completion_ids))
        return [lowercase_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, use_vllm=False, bf16=bf16, report_to=[], save_strategy="no",
            disable_tqdm=True, logging_steps=1, max_steps=steps, seed=0, learning_rate=LR, max_grad_norm=1.0,
            num_generations=group, per_device_train_batch_size=len(messages) * group, gradient_accumulation_steps=1,
            max_completion_length=tokens, generation_kwargs={"min_new_tokens": tokens}, temperature=1.0,
            lr_scheduler_type="constant", beta=0.0, epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH, loss_type="dapo", dataloader_num_workers=0,
        )
        timer = _StepTimer()
        trainer = GRPOTrainer(
            model=load_model(model_dir), reward_funcs=reward, args=cfg, processing_class=load_tokenizer(model_dir),
            train_dataset=Dataset.from_dict({"prompt": messages}), callbacks=[timer.callback],
        )
        trainer.train()
    if len(timer.seconds) != steps or len(generated) != steps:
        raise RuntimeError(f"expected {steps} timed steps, got {len(timer.seconds)} (rewards called {len(generated)}x)")
    return {"step_s": timer.seconds[-1], "generated": generated[-1]}


# ------------------------------------------------------------------------------------------ memrl


def vllm_generate_exact(backend, prompts: list[list[int]], tokens: int) -> list[Generation]:
    """`VLLMBackend.generate` with EOS ignored, so that every completion has exactly `tokens` tokens."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, ignore_eos=True, temperature=1.0, logprobs=0)
    outs = backend.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    gens = []
    for o in outs:
        ids = list(o.outputs[0].token_ids)
        logps = [float(step[t].logprob) for t, step in zip(ids, o.outputs[0].logprobs, strict=True)]
        gens.append(Generation(ids, logps, backend.tokenizer.decode(ids)))
    return gens


def memrl_step(generate, learner: Learner, prompts: list[list[int]], group: int) -> dict:
    """Generate G completions per prompt, reward, GRPO advantages, one learner step; seconds per phase."""
    t0 = time.perf_counter()
    flat = [p for p in prompts for _ in range(group)]
    gens = generate(flat)
    t1 = time.perf_counter()
    rewards = torch.tensor([lowercase_share(g.text) for g in gens])
    group_ids = torch.arange(len(prompts)).repeat_interleave(group)
    adv = get_advantage_fn("grpo")(rewards, group_ids)
    trajs = [
        Trajectory(
            [Context(p + g.token_ids, [0] * len(p) + [1] * len(g.token_ids), [0.0] * len(p) + g.logprobs)],
            reward=float(r), group_id=int(i), advantage=float(a),
        )
        for p, g, r, i, a in zip(flat, gens, rewards, group_ids, adv, strict=True)
    ]
    learner.train_step(trajs)
    t2 = time.perf_counter()
    return {"step_s": t2 - t0, "generate_s": t1 - t0, "learn_s": t2 - t1,
            "generated": sum(len(g.token_ids) for g in gens)}


def main(argv: list[str] | None = None, backend=None) -> dict:
    """Run the comparison; `backend` reuses an already started VLLMBackend on the same model (tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4, help="completions per prompt (GRPO group size)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per completion (exact: EOS suppressed)")
    ap.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True,
                    help="also time memrl with the HFBackend (same engine family as TRL's generate)")
    ap.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--trl-bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="TRL under bf16 autocast (default: as memrl's learner on this CPU, memrl.device)")
    args = ap.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    model_dir = resolve_model_dir(args.model)
    tok = load_tokenizer(model_dir)
    messages = chat_prompts(args.prompts)
    prompts = [list(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for m in messages]
    out: dict = {}
    rows: list[tuple[str, dict, str]] = []
    # TRL trains in the precision memrl's learner uses on this CPU (memrl.device.learner_autocast) unless told
    dev = plan("cpu")
    trl_bf16 = dev.autocast_dtype is not None if args.trl_bf16 is None else args.trl_bf16

    trl_error = None
    if args.trl:  # first: TRL's Accelerate must not find the torch.distributed world the memrl learner creates
        try:
            out["trl"] = run_trl(model_dir, messages, args.group, args.tokens, bf16=trl_bf16)
            rows.append(("TRL GRPOTrainer (HF generate)", out["trl"],
                         "HF `generate` (batched) + reward + fwd/bwd + AdamW"))
        except Exception as e:  # reported below; the memrl side is still measured
            trl_error = f"{type(e).__name__}: {e}"
            traceback.print_exc()

    learner = Learner(str(model_dir), **learner_sections(zero_stage=0, lr=LR, clip_low=CLIP_LOW, clip_high=CLIP_HIGH))
    if backend is None:
        from memrl.agents import VLLMBackend

        backend = VLLMBackend(model_dir, rollout=RolloutCfg(max_model_len=2048))
    engines = [("vllm", "memrl (vLLM engine)", lambda ps: vllm_generate_exact(backend, ps, args.tokens),
                "vLLM generate + reward + Learner.train_step")]
    if args.hf:
        hf = HFBackend(load_model(model_dir), tok)
        hf.eos_ids = set()  # exact token budget, as the other paths
        cfg = SamplingConfig(max_tokens=args.tokens, temperature=1.0)
        engines.append(("hf", "memrl (HFBackend, unbatched)", lambda ps: hf.generate(ps, cfg),
                        "HF decode one sequence at a time + reward + Learner.train_step"))
    for key, label, generate, note in engines:
        memrl_step(generate, learner, prompts, args.group)  # warm-up step, as TRL's first step
        out[key] = memrl_step(generate, learner, prompts, args.group)
        rows.append((label, out[key], note))

    for _, r, _ in rows:
        r["tok_s"] = r["generated"] / r["step_s"]
    if "trl" in out:
        out["ratio_step_time"] = out["vllm"]["step_s"] / out["trl"]["step_s"]
        out["ratio_tok_s"] = out["vllm"]["tok_s"] / out["trl"]["tok_s"]

    print(f"machine: {machine()}")
    print(f"precision: memrl engine {DTYPE_NAMES[dev.rollout_dtype]}, learner fp32 weights with autocast "
          f"{DTYPE_NAMES.get(dev.autocast_dtype, 'off')}; TRL bf16={trl_bf16}")
    print(f"model {args.model}, {args.prompts} prompts x G={args.group}, exactly {args.tokens} completion tokens, "
          f"prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens; second of two steps timed")
    print("| path | step s | generate s | learn s | generated tokens | generated tokens/s | step includes |")
    print("|---|---|---|---|---|---|---|")
    for label, r, note in rows:
        gen = f"{r['generate_s']:.2f}" if "generate_s" in r else "-"
        learn = f"{r['learn_s']:.2f}" if "learn_s" in r else "-"
        print(f"| {label} | {r['step_s']:.2f} | {gen} | {learn} | {r['generated']} | {r['tok_s']:.0f} | {note} |")
    if "trl" in out:
        print(f"ratio memrl(vLLM) / TRL step time: {out['ratio_step_time']:.3f} "
              f"(tokens/s ratio {out['ratio_tok_s']:.2f}x)")
        if "hf" in out:
            out["ratio_step_time_hf"] = out["hf"]["step_s"] / out["trl"]["step_s"]
            print(f"ratio memrl(HFBackend) / TRL step time: {out['ratio_step_time_hf']:.3f}")
    elif args.trl:
        print(f"TRL GRPOTrainer failed on this setup: {trl_error}")
        print(f"tried: GRPOConfig(use_cpu=True, use_vllm=False, bf16={trl_bf16}, report_to=[]), a datasets.Dataset "
              "of chat prompts, a plain reward callable; the memrl side above is still measured")
        out["trl_error"] = trl_error
    return out


if __name__ == "__main__":
    main()
