"""`memrl recipe plan`: the paper recipes are checked on this CPU machine against a Search-R1-format corpus and
QA files made here, and a recipe that cannot fit is refused with its numbers."""

from __future__ import annotations

import json

import pytest

from memrl.cli import main
from memrl.plan import GIB, PlanError, learner_bytes, model_shape, plan, trainable
from memrl.recipes.schema import load_recipe

# Architecture hyper-parameters from each model's published config.json (no weights are written)
QWEN = {
    "Qwen2.5-7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "Qwen2.5-3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
QWEN["Qwen2.5-3B-Instruct"] = QWEN["Qwen2.5-3B"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer):
    """Model directories (config + tokenizer, no weights), a Search-R1 corpus and QA files."""
    root = tmp_path_factory.mktemp("plan")
    models = {}
    for name, cfg in QWEN.items():
        d = root / "models" / name
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                                                   "max_position_embeddings": 32768, **cfg}))
        tiny_tokenizer.save_pretrained(d)
        models[name] = d
    corpus = root / "wiki-18.jsonl"
    rows = [{"id": str(i), "contents": f'"Title {i}"\nPassage {i} mentions the city of Velmora{i}.'}
            for i in range(50)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qa = root / "qa"
    qa.mkdir()
    for split in ("train", "test"):
        lines = [{"id": f"{split}{i}", "question": f"Where is passage {i}?", "golden_answers": [f"Velmora{i}"]}
                 for i in range(20)]
        (qa / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    from memrl.envs.faiss_index import build_index
    from memrl.envs.retrieval import minilm_path

    index = build_index(corpus, minilm_path(), root / "e5")  # the paper recipes read a prebuilt FAISS index
    return {"models": models, "corpus": corpus, "qa": qa, "index": index}


def _paper(name: str, world, *extra: str):
    recipe = load_recipe(name)
    model = world["models"][recipe.model.name.rsplit("/", 1)[-1]]
    kw = recipe.env.kwargs
    sets = [f"model.name={model}", f"env.kwargs.corpus={world['corpus']}",
            f"env.kwargs.dataset={world['qa'] / 'train.jsonl'}", f"env.eval_kwargs.dataset={world['qa'] / 'test.jsonl'}"]
    if kw.get("retriever") == "faiss":  # stand-ins for e5_Flat.index, wiki-18.jsonl and e5-base-v2
        from memrl.envs.retrieval import minilm_path

        sets += [f"env.kwargs.index={world['index'] / 'flat.index'}", f"env.kwargs.encoder={minilm_path()}",
                 f"env.kwargs.corpus={world['index'] / 'corpus.jsonl'}"]
    assert kw["split"] == "train" and recipe.env.eval_kwargs["split"] == "eval"  # disjoint by default
    return load_recipe(name, sets + list(extra))


@pytest.mark.parametrize("name", ["mem1", "memsearcher", "search-r1"])
def test_paper_recipes_pass_the_plan(name, world, capsys):
    text = plan(_paper(name, world))
    assert "one tool call ran" in text and text.endswith("fits")
    assert "GPU: 80 GiB declared" in text


def test_the_memory_estimate_by_hand(world):
    shape = model_shape(world["models"]["Qwen2.5-7B"])
    assert 7.6e9 < shape.params < 7.7e9  # Qwen2.5-7B: 7.62B parameters (untied)
    recipe = _paper("mem1", world, "learner.ranks=1", "algorithm.kl_coef=0.001")
    parts = learner_bytes(shape, recipe)
    n = shape.params
    assert parts["weights"] == 2 * n and parts["gradients"] == 2 * n  # one rank: ZeRO-3 shards nothing
    assert parts["optimizer"] == 12 * n and parts["reference"] == 2 * n
    four = learner_bytes(shape, _paper("mem1", world, "learner.ranks=4"))  # ZeRO-3 over 4 ranks
    assert four["weights"] == 2 * n / 4 and four["gradients"] == 2 * n / 4 and four["optimizer"] == 12 * n / 4
    assert four["reference"] == 2 * n / 4  # ZeRO-3 shards the frozen reference with the policy
    two = learner_bytes(shape, _paper("memsearcher", world, "learner.ranks=2", f"model.name={world['models']['Qwen2.5-7B']}"))
    assert two["weights"] == 2 * n and two["gradients"] == 2 * n / 2 and two["optimizer"] == 12 * n / 2  # ZeRO-2
    assert trainable(shape, 2) == 2 * shape.per_layer + shape.vocab * shape.hidden + shape.hidden


def test_a_full_fine_tune_of_7b_on_one_rank_is_refused_with_numbers(world):
    recipe = _paper("mem1", world, "learner.ranks=1")
    with pytest.raises(PlanError) as err:
        plan(recipe)
    text = str(err.value)
    assert "does not fit" in text and "the learner needs ~" in text and "learner.train_layers" in text
    total = sum(learner_bytes(model_shape(world["models"]["Qwen2.5-7B"]), recipe).values()) / GIB
    assert f"~{total:.0f} GiB" in text and total > 100


def test_a_missing_corpus_or_model_is_one_line_before_any_model_loads(world, tmp_path, capsys):
    recipe = _paper("memsearcher", world, f"env.kwargs.corpus={tmp_path / 'nope.jsonl'}", "env.kwargs.retriever=bm25")
    with pytest.raises(PlanError, match="nope.jsonl"):
        plan(recipe)
    assert main(["recipe", "plan", "memsearcher", "--set", f"model.name={tmp_path / 'no-model'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no-model" in err[0]


def test_train_and_eval_report_a_missing_model_as_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    assert main(["train", "quickstart", "--set", f"model.name={missing}", "--set", f"output_dir={tmp_path}/r"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-dir" in err[0]
    assert main(["eval", "--model", str(missing), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-dir" in err[0]


def test_the_plan_prints_the_colocated_memory_and_refuses_an_engine_share_the_learner_needs(world):
    """Either placement's plan prints the colocated one; colocated, the engine's share of the GPU must leave the
    learner's resident state (weights, gradients, optimizer, reference) where it is."""
    text = plan(_paper("memsearcher", world))
    assert "if colocated (resources.placement: colocated): training" in text and text.endswith("fits")
    colocated = ("resources.placement=colocated", "algorithm.max_staleness=0", "algorithm.partial_rollouts=false")
    with pytest.raises(PlanError, match=r"colocated, rollout.gpu_memory_utilization=0.9 would take memory the "
                                        r"learner keeps: set it to at most 0\.\d\d"):
        plan(_paper("memsearcher", world, *colocated))
    recipe = _paper("memsearcher", world, *colocated)
    lines = [line for line in str(pytest.raises(PlanError, plan, recipe).value).splitlines() if "at most" in line]
    share = float(lines[-1].rsplit(" ", 1)[-1])
    fits = plan(_paper("memsearcher", world, *colocated, f"rollout.gpu_memory_utilization={share}"))
    assert "learner: 4 rank(s), each on a GPU shared with an engine" in fits and fits.endswith("fits")
