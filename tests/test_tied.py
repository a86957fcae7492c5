"""Tied-embedding models (Qwen2.5-3B, SmolLM2 as published): the engine and the learner load one untied copy,
made once, so that after a weight update the engine's greedy output equals HF's on the new weights."""

from __future__ import annotations

import json

import pytest
import torch

from memrl.agents import HFBackend, SamplingConfig
from memrl.models import load_model, resolve_model_dir, save_tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tied") / "tiny-tied"
    save_tiny_model(out, tied=True)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    return out


def test_a_tied_model_resolves_to_an_untied_copy_made_once(tied_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMRL_CACHE", str(tmp_path))  # the copy goes to the cache
    untied = resolve_model_dir(tied_dir)
    assert untied.parent == tmp_path / "models"
    assert untied != tied_dir and untied.name.startswith("untied-tiny-tied-")
    assert json.loads((untied / "config.json").read_text())["tie_word_embeddings"] is False
    assert (untied / "tokenizer.json").is_file() and (untied / "generation_config.json").is_file()
    mtime = (untied / "model.safetensors").stat().st_mtime
    assert resolve_model_dir(str(tied_dir)) == untied and (untied / "model.safetensors").stat().st_mtime == mtime
    from safetensors.torch import load_file

    w = load_file(untied / "model.safetensors")
    assert torch.equal(w["lm_head.weight"], w["model.embed_tokens.weight"])  # the head starts as the embedding
    assert w["lm_head.weight"].data_ptr() != w["model.embed_tokens.weight"].data_ptr()


@pytest.mark.slow
def test_after_an_update_the_engine_of_a_tied_model_equals_hf_of_the_new_weights(tied_dir, tmp_path, monkeypatch):
    from memrl.agents import VLLMBackend
    from memrl.recipes.schema import RolloutCfg

    monkeypatch.setenv("MEMRL_CACHE", str(tmp_path))
    untied = resolve_model_dir(tied_dir)  # the engine's copy
    tok = tiny_tokenizer()
    prompts = [tok.encode("<search>Ana"), tok.encode("hello world, ")]
    cfg = SamplingConfig(max_tokens=16, temperature=0.0)
    engine = VLLMBackend(untied, rollout=RolloutCfg(max_model_len=512))
    try:
        model = load_model(tied_dir)  # the learner's path: the same untied copy
        before = [g.token_ids for g in engine.generate(prompts, cfg)]
        assert before == [g.token_ids for g in HFBackend(model, tok).generate(prompts, cfg)]
        with torch.no_grad():  # move the head away from the embedding, as training does
            model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(1)))
        engine.load_state_dict(model.state_dict(), version=1)
        after = [g.token_ids for g in engine.generate(prompts, cfg)]
        assert after == [g.token_ids for g in HFBackend(model, tok).generate(prompts, cfg)]
        assert after != before
        # the same over the native path (vLLM's weight-transfer protocol, memrl.weight_transfer)
        from memrl.weight_transfer import LearnerSource, connect

        transfer, client = connect(LearnerSource(model, zero3=False), [engine])
        with torch.no_grad():
            model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(2)))
        client.version = 2
        transfer.send_weights()
        transfer.shutdown()
        native = [g.token_ids for g in engine.generate(prompts, cfg)]
        assert native == [g.token_ids for g in HFBackend(model, tok).generate(prompts, cfg)]
        assert native != after
    finally:
        engine.close()
