"""The engine/learner mismatch, corrected (`algorithm.old_logprobs: recompute`): a bf16 vLLM engine samples,
an fp32 learner trains. The mismatch it measures is non-zero, and the step's policy loss equals the hand
computation from the engine's recorded log-probs, the learner's recomputed ones and the clip."""

from __future__ import annotations

import pytest
import torch

from memrl.agents import SamplingConfig, make_agent, run_episodes, streaming_policy
from memrl.envs import build as build_env
from memrl.recipes.schema import AgentCfg, EnvCfg, RolloutCfg

pytestmark = pytest.mark.slow

CLIP = 1.0005  # narrow enough that some tokens' weights are truncated (the tiny model's mismatch is ~1e-3 per token)


def _rollouts(engine):
    agent = make_agent(engine.tokenizer, AgentCfg(name="memsearcher", memory_tokens=16))
    envs = [build_env(EnvCfg(id="memrl.testing:LettersEnv")) for _ in range(6)]
    trajs = run_episodes(agent, envs, list(range(6)), streaming_policy(engine),
                         SamplingConfig(max_tokens=12, temperature=1.0, seed=0))
    for i, t in enumerate(trajs):
        t.advantage = 1.0 if i % 2 == 0 else -0.5
    return trajs


@pytest.fixture(scope="module")
def bf16_engine(tiny_dir):
    from memrl.agents import VLLMBackend

    engine = VLLMBackend(tiny_dir, rollout=RolloutCfg(max_model_len=1024, dtype="bfloat16"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def bf16_rollouts(bf16_engine):
    return _rollouts(bf16_engine)


def _mean_abs_diff(learner, trajs) -> float:
    contexts = [c for t in trajs for c in t.contexts if c.num_generated]
    diffs = []
    for c, lp in zip(contexts, learner.context_logprobs(contexts), strict=True):
        at = torch.tensor(c.loss_mask, dtype=torch.bool)
        at[0] = False
        diffs.append((lp[at] - torch.tensor(c.logprobs)[at]).abs())
    return float(torch.cat(diffs).mean())


def test_recompute_measures_the_mismatch_and_weights_each_token_by_the_truncated_ratio(bf16_rollouts, vllm_tiny):
    from memrl.rl.learner import Learner
    from memrl.testing import learner_sections

    trajs = bf16_rollouts
    assert not any(t.failed for t in trajs)
    learner = Learner("tiny:0", **learner_sections(old_logprobs="recompute", is_clip=CLIP, loss_agg="token_mean",
                                                   zero_stage=0, lr=1e-3), seed=0)
    contexts = [(c, t.advantage) for t in trajs for c in t.contexts if c.num_generated]
    prox = learner.context_logprobs([c for c, _ in contexts])  # the fp32 learner's log-probs, before the update
    terms, diffs = [], []
    for (c, adv), lp in zip(contexts, prox, strict=True):
        at = torch.tensor(c.loss_mask, dtype=torch.bool)
        at[0] = False
        engine = torch.tensor(c.logprobs)[at]
        diffs.append((lp[at] - engine).abs())
        # ratio exp(logp - prox) = 1 at the first update (same weights), so pg = -A * min(pi_learner / pi_engine, CLIP)
        terms.append(-adv * torch.exp(lp[at] - engine).clamp(max=CLIP))
    n = sum(len(t) for t in terms)
    want = float(sum(t.sum() for t in terms)) / n  # token_mean: every loss token weighs 1 / n
    mismatch = float(torch.cat(diffs).mean())
    fp32 = _mean_abs_diff(learner, _rollouts(vllm_tiny))  # the same model sampled by an fp32 engine

    m = learner.train_step(trajs)
    print(f"bf16 engine vs fp32 learner: mean |logp diff| {m['mismatch_logp_abs']:.4f} (fp32 engine: {fp32:.1e}), "
          f"k3 {m['mismatch_k3']:.2e}, "
          f"truncated {m['offpolicy_clip_frac']:.2f} of {n} tokens")
    assert m["skipped"] == 0.0 and m["train_tokens"] == n
    assert m["mismatch_logp_abs"] > 10 * fp32  # it is the bf16 engine's: an fp32 engine agrees with the learner
    assert m["mismatch_logp_abs"] == pytest.approx(mismatch, rel=1e-5)
    assert m["mismatch_k3"] > 0
    assert 0 < m["offpolicy_clip_frac"] < 1  # the clip binds on some tokens, not all
    assert m["pg_loss"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # against the recomputed log-probs, not the engine's


def test_fp32_learner_weights_load_into_a_bf16_engine(bf16_engine, bf16_rollouts):
    """The weights a (fp32) learner syncs are cast on load by the bf16 engine (the CPU plan's `rollout_dtype` on
    CPUs with native bf16): after a visible update the engine samples with the new weights, its log-probs agree with
    the learner's to bf16 precision, and they moved by far more than that."""
    from memrl.rl.learner import Learner
    from memrl.testing import learner_sections

    learner = Learner("tiny:0", **learner_sections(zero_stage=0, lr=3e-2), seed=0)
    before = _mean_abs_diff(learner, bf16_rollouts)
    for _ in range(3):
        assert learner.train_step(bf16_rollouts)["skipped"] == 0.0
    moved = _mean_abs_diff(learner, bf16_rollouts)  # learner now vs the engine's (old weights) sampling log-probs
    bf16_engine.load_state_dict(learner.state_dict(), version=1)
    after = _mean_abs_diff(learner, _rollouts(bf16_engine))  # fresh samples from the synced engine
    print(f"|learner - engine| log-prob: before update {before:.1e}, after update {moved:.1e}, after sync {after:.1e}")
    assert moved > 20 * before and after < 5 * before


def test_a_bf16_autocast_learner_agrees_with_the_fp32_one_to_bf16_precision(monkeypatch, bf16_rollouts):
    """The CPU learner's bf16 autocast (`memrl.device.learner_autocast`, on CPUs with native bf16; forced here):
    its log-probs differ from the fp32 learner's by bf16 rounding only, its weights and AdamW stay fp32, and one
    step computes the same loss and gradient norm to within that rounding."""
    from memrl.rl.learner import Learner
    from memrl.testing import learner_sections

    def learner(autocast: str) -> Learner:
        monkeypatch.setenv("MEMRL_AUTOCAST", autocast)
        return Learner("tiny:0", **learner_sections(old_logprobs="engine", loss_agg="token_mean", zero_stage=0,
                                                    lr=1e-3), seed=0)

    fp32, bf16 = learner("off"), learner("bfloat16")
    assert fp32.device.autocast_dtype is None and bf16.device.autocast_dtype == torch.bfloat16
    contexts = [c for t in bf16_rollouts for c in t.contexts if c.num_generated]
    a, b = fp32.context_logprobs(contexts), bf16.context_logprobs(contexts)
    diff = float(torch.cat([(x - y).abs() for x, y in zip(a, b, strict=True)]).mean())
    m32, m16 = fp32.train_step(bf16_rollouts), bf16.train_step(bf16_rollouts)
    print(f"bf16 autocast vs fp32 learner: mean |logp diff| {diff:.1e}; pg_loss {m16['pg_loss']:.5f} vs "
          f"{m32['pg_loss']:.5f}; grad norm {m16['grad_norm']:.4f} vs {m32['grad_norm']:.4f}")
    assert 0 < diff < 0.05
    assert m16["skipped"] == 0.0 and m16["pg_loss"] == pytest.approx(m32["pg_loss"], rel=0.05, abs=1e-3)
    assert m16["grad_norm"] == pytest.approx(m32["grad_norm"], rel=0.05)
    assert {p.dtype for p in bf16.engine.module.parameters()} == {torch.float32}
