"""LoRA (learner.lora_rank): only the adapters train; the adapter alone is synced to vLLM (LoRA hot-load), after
which vLLM greedy equals HF greedy of base + adapter; the exported model is the merged one and loads in plain
transformers and vLLM."""

from __future__ import annotations

import pytest
import torch

from memrl.agents import HFBackend, SamplingConfig
from memrl.rl.learner import Learner
from memrl.testing import learner_sections
from tests.rl.test_learner import _trajs
from tests.rl.test_weight_sync import _prompts  # the same three prompts as the blob-path test

CFG = SamplingConfig(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def lora_learner():
    learner = Learner("tiny:0", **learner_sections(zero_stage=2, lr=3e-2, lora_rank=8, lora_alpha=16.0), seed=0)
    base = {k: v.clone() for k, v in learner.state_dict().items()}
    metrics = learner.train_step(_trajs(0))
    return learner, base, metrics


def test_only_the_adapters_train_and_the_merged_weights_move(lora_learner):
    learner, base, metrics = lora_learner
    trainable = [n for n, p in learner.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert metrics["skipped"] == 0.0 and metrics["grad_norm"] > 0
    merged = learner.state_dict()
    assert set(merged) == set(base)  # the base model's HF names
    moved = {k for k in merged if not torch.equal(merged[k], base[k])}
    assert moved and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj") for k in moved)
    assert len(learner.weights_blob()) < 0.1 * sum(v.numel() * 4 for v in merged.values())  # the adapter only


def test_schema_refuses_lora_with_train_layers_or_zero3():
    from memrl.recipes.schema import LearnerCfg

    with pytest.raises(ValueError, match="set one"):
        LearnerCfg(lora_rank=8, train_layers=2)
    with pytest.raises(ValueError, match="zero_stage 0-2"):
        LearnerCfg(lora_rank=8, zero_stage=3)


@pytest.mark.slow
def test_adapter_sync_makes_vllm_greedy_equal_hf_greedy_of_base_plus_adapter(lora_learner, tiny_dir, tiny_tokenizer):
    from memrl.agents import VLLMBackend
    from memrl.recipes.schema import RolloutCfg

    learner, base, _ = lora_learner
    prompts = _prompts(tiny_tokenizer)
    engine = VLLMBackend(tiny_dir, rollout=RolloutCfg(max_model_len=512), lora_rank=8)
    try:
        before = [g.token_ids for g in engine.generate(prompts, CFG)]
        peft_model = learner.module.eval()
        hf = [g.token_ids for g in HFBackend(peft_model, tiny_tokenizer).generate(prompts, CFG)]
        assert hf != before  # the trained adapter changes greedy output
        engine.load_blob(learner.weights_blob(), version=1)
        after = engine.generate(prompts, CFG)
        assert [g.token_ids for g in after] == hf
        hf_gens = HFBackend(peft_model, tiny_tokenizer).generate(prompts, CFG)
        for v, h in zip(after, hf_gens, strict=True):
            assert max(abs(a - b) for a, b in zip(v.logprobs, h.logprobs, strict=True)) < 1e-3
        assert engine.version == 1 and engine.engine_weight_version() == "1"
        engine.load_blob(learner.weights_blob(), version=2)  # a second hot-load replaces the first adapter
        assert set(engine.llm.llm_engine.list_loras()) == {2}
        assert [g.token_ids for g in engine.generate(prompts, CFG)] == hf
    finally:
        engine.close()


@pytest.mark.slow
def test_the_exported_model_is_merged_and_loads_in_transformers_and_vllm(lora_learner, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from memrl.agents import VLLMBackend
    from memrl.recipes.schema import RolloutCfg

    learner, _, _ = lora_learner
    learner.save_state(tmp_path)
    out = tmp_path / "model"
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    tiny_tokenizer.save_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompts = _prompts(tiny_tokenizer)
    want = [g.token_ids for g in HFBackend(learner.module.eval(), tiny_tokenizer).generate(prompts, CFG)]
    assert [g.token_ids for g in HFBackend(plain, tiny_tokenizer).generate(prompts, CFG)] == want
    engine = VLLMBackend(out, rollout=RolloutCfg(max_model_len=512))
    try:
        assert [g.token_ids for g in engine.generate(prompts, CFG)] == want
    finally:
        engine.close()


@pytest.mark.slow
def test_a_lora_run_trains_syncs_adapters_and_exports_a_merged_model(tmp_path, ray_local):
    """The whole loop with learner.lora_rank: rollouts on the hot-loaded adapter of each version, checkpoints,
    and an export that plain transformers loads (merged: no adapter files)."""
    from transformers import AutoModelForCausalLM

    from memrl.rl.metrics import read_metrics
    from memrl.rl.trainer import Trainer
    from tests.rl.test_learning import _recipe

    recipe = _recipe(tmp_path, steps=3, **{"learner.lora_rank": 8, "learner.train_layers": "null",
                                           "learner.lr": "3e-2", "train.checkpoint_every": 2})
    trainer = Trainer(recipe)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "grpo"]
    assert [r["rollout_weight_version"] for r in recs] == [0, 1, 2]
    assert all(r["skipped"] == 0.0 and r["grad_norm"] > 0 for r in recs)
    assert recs[-1]["reward_mean"] != recs[0]["reward_mean"] or recs[-1]["loss"] != recs[0]["loss"]
    model_dir = tmp_path / "run" / "model"
    assert summary["model"] == str(model_dir) and not (model_dir / "adapter_config.json").exists()
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size > 0
