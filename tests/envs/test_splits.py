"""Held-out means unseen: for every shipped recipe on generated tasks, no held-out task shares a question, an
entity or an answer with what training can draw, by construction (names and answers are owned by one split)."""

import pytest

from memrl.envs import build, compose, make
from memrl.envs.arith import ArithEnv
from memrl.envs.baselines import answer_prior, most_common_answer
from memrl.envs.core import EVAL_SHARE, Task, TaskEnv, split_of
from memrl.envs.kb import KBQAEnv, build_world
from memrl.recipes.schema import EnvCfg, RecipeError, load_recipe, shipped_recipes
from memrl.rl.streams import STREAMS, oracle_seeds, stream_seed, stream_seeds, task_seeds

GENERATED = ("memrl/KBQA-v0", "memrl/Arith-v0")
TRAIN_DRAWS, HELD_OUT = 3000, 200


def _generated_recipes() -> list[str]:
    return [n for n in shipped_recipes() if load_recipe(n).env.id in GENERATED]


_FOOTPRINTS: dict = {}


def _footprint_of(section: EnvCfg, seeds: tuple[int, ...]) -> tuple[set, set, set]:
    """`_footprint` of an env section, once per (section, seeds): recipes that share an env share it."""
    key = (section.model_dump_json(), seeds)
    if key not in _FOOTPRINTS:
        _FOOTPRINTS[key] = _footprint(build(section), seeds)
    return _FOOTPRINTS[key]


def _footprint(env, seeds) -> tuple[set, set, set]:
    """(questions, answers, entities) of every objective of the episodes at `seeds`."""
    qs, ans, ents = set(), set(), set()
    for seed in seeds:
        env.reset(seed=seed)
        for task in env.unwrapped.objectives():
            qs.add(task.question)
            ans.update(a.lower() for a in task.answers)
            ents.update(task.meta.get("entities", []))
    return qs, ans, ents


def test_shipped_generated_recipes_exist():
    assert {"quickstart", "experiments/grpo-gain"} <= set(_generated_recipes())


@pytest.mark.parametrize("name", _generated_recipes())
def test_no_held_out_task_of_a_shipped_recipe_occurs_in_3000_training_draws(name):
    recipe = load_recipe(name)
    steps = -(-TRAIN_DRAWS // recipe.algorithm.tasks_per_step)
    train_seeds = sorted({s for step in range(steps) for s in task_seeds(recipe, step)[0]})[:TRAIN_DRAWS]
    train_seeds += [s for step in range(recipe.sft.steps) for s in oracle_seeds(recipe, "sft", step)]
    train = _footprint_of(recipe.env.at(), tuple(train_seeds))
    for held_out in ("confirm", "tune"):
        seeds = load_recipe(name, [f"train.held_out={held_out}"]).held_out_seeds(HELD_OUT)
        held = _footprint_of(recipe.env.at(held_out=True), tuple(seeds))
        assert len(held[0]) >= HELD_OUT * 0.9  # the held-out set is not a handful of repeated questions
        for what, a, b in zip(("questions", "answers", "entities"), train, held, strict=True):
            assert not a & b, f"{name}: {len(a & b)} held-out {what} occur in training, e.g. {sorted(a & b)[:3]}"


def test_split_of_partitions_keys_by_their_text():
    keys = [f"Name{i}" for i in range(5000)]
    share = sum(split_of(k) == "eval" for k in keys) / len(keys)
    assert abs(share - 1 / EVAL_SHARE) < 0.02
    assert split_of("Velmora") == split_of("  velmora ")  # normalized: case and padding do not move a key


def test_kb_worlds_draw_names_of_their_own_split_only_and_each_episode_has_its_own():
    for split in ("train", "eval"):
        world = build_world(7, split=split)
        assert {split_of(p["title"]) for p in world.corpus} == {split}
    env = KBQAEnv(min_hops=1, max_hops=1, split="eval")
    env.reset(seed=1)
    first = env.task.meta["world"]
    env.reset(seed=2)
    assert env.task.meta["world"] != first  # a fact learned in one episode is not a fact of the next
    env.reset(seed=1)
    assert env.task.meta["world"] == first  # a pure function of the seed


def test_the_parts_of_a_composed_episode_share_one_world_and_one_search():
    env = compose([KBQAEnv(min_hops=1, max_hops=1, topk=2) for _ in range(3)])
    env.reset(seed=5)
    assert len({tuple(p.task.meta["world"]) for p in env.parts}) == 1
    obs = env.step(f"<search>{env.parts[0].task.meta['entities'][0]}</search>")[0]
    assert obs.count("Doc 1 ") == 1  # one index for the episode: one result list, not one per part


def test_arith_answers_belong_to_the_split():
    for split in ("train", "eval"):
        env = ArithEnv(split=split)
        for seed in range(200):
            env.reset(seed=seed)
            assert split_of(env.task.answers[0]) == split


def test_a_table_of_memorized_training_answers_scores_zero_on_held_out_tasks():
    """The failure this replaces: with one fixed world, 63% of held-out questions were training questions."""
    recipe = load_recipe("quickstart")
    train_env, eval_env = build(recipe.env.at()), build(recipe.env.at(held_out=True))
    table = {}
    for seed in stream_seeds(0, 0, "grpo", 0, 2000):
        train_env.reset(seed=seed)
        table.update({t.question: t.answers[0] for t in train_env.unwrapped.objectives()})
    hits = 0
    for seed in recipe.held_out_seeds(100):
        eval_env.reset(seed=seed)
        hits += sum(t.question in table for t in eval_env.unwrapped.objectives())
    assert len(table) > 3000 and hits == 0


class _Capitals(TaskEnv):
    """Three fixed questions in train, two in eval: the answer prior's hand example."""

    ROWS = {"train": [("A?", "Paris"), ("B?", "Paris"), ("C?", "Rome")], "eval": [("D?", "Paris"), ("E?", "Oslo")]}

    def sample_task(self, rng):
        q, a = self.ROWS[self.split][self.episode_seed % len(self.ROWS[self.split])]
        return Task(q, [a])


def test_answer_prior_guesses_the_most_common_training_answer_by_hand():
    train, held = _Capitals(split="train"), _Capitals(split="eval")
    assert most_common_answer(train, [0, 1, 2]) == "Paris"  # Paris twice, Rome once
    out = answer_prior(train, [0, 1, 2], held, [0, 1, 0, 1])  # eval answers Paris, Oslo, Paris, Oslo
    assert out["guess"] == "Paris" and out["em"] == 0.5 and out["episodes"] == 4
    assert out["em_stderr"] == pytest.approx(((4 * 0.25) / 3) ** 0.5 / 2)  # sample sd of 1,0,1,0 over sqrt(4)
    composed = answer_prior(compose([_Capitals(split="train")] * 1), [0], compose([_Capitals(split="eval")]), [0])
    assert composed["guess"] in ("Paris", "Rome")


def test_the_answer_prior_of_generated_tasks_is_zero():
    recipe = load_recipe("quickstart")
    out = answer_prior(build(recipe.env.at()), stream_seeds(0, 0, "prior", 0, 300), build(recipe.env.at(held_out=True)),
                       recipe.held_out_seeds(50))
    assert out["em"] == 0.0 and out["guess"]


def test_recipes_never_evaluate_on_the_training_split():
    assert EnvCfg().at().kwargs["split"] == "train" and EnvCfg().at(held_out=True).kwargs["split"] == "eval"
    with pytest.raises(RecipeError, match="held-out tasks would come from the training tasks"):
        load_recipe("quickstart", ["env.eval_kwargs={split: train}"])
    with pytest.raises(RecipeError, match="held-out tasks would come from the training tasks"):
        load_recipe("experiments/searchqa", ["env.kwargs.split=all", "env.eval_kwargs={split: all}"])
    with pytest.raises(RecipeError, match="tuning and confirmation sets"):
        load_recipe("quickstart", ["env.tune_seed_offset=10000000"])
    # a separate test file may be read whole (split: all): another dataset, so not the training tasks
    load_recipe("experiments/searchqa", ["env.eval_kwargs={split: all, dataset: other.jsonl}"])


def test_an_env_without_split_gets_a_clear_error():
    class NoSplit(TaskEnv):
        def __init__(self):
            super().__init__()

        def sample_task(self, rng):
            return Task("q", ["a"])

    section = EnvCfg(id=f"{__name__}:NoSplit").at()
    globals()["NoSplit"] = NoSplit
    with pytest.raises(TypeError, match="does not take the keyword `split`"):
        build(section)


def test_the_run_seed_moves_the_training_stream():
    a, b = load_recipe("quickstart"), load_recipe("quickstart", ["seed=1"])
    assert not set(task_seeds(a, 0)[0]) & set(task_seeds(b, 0)[0])
    assert not set(oracle_seeds(a, "sft", 0)) & set(oracle_seeds(b, "sft", 0))
    assert set(oracle_seeds(a, "sft", 0)).isdisjoint(oracle_seeds(a, "control", 0))
    qa = {make("memrl/KBQA-v0").reset(seed=s)[1]["objectives"][0] for s in oracle_seeds(a, "sft", 0)}
    qb = {make("memrl/KBQA-v0").reset(seed=s)[1]["objectives"][0] for s in oracle_seeds(b, "sft", 0)}
    assert qa != qb  # another seed, other SFT questions
    assert a.held_out_seeds(3) == b.held_out_seeds(3) == [10_000_000, 10_000_001, 10_000_002]  # same confirm set
    assert load_recipe("quickstart", ["train.held_out=tune"]).held_out_seeds(1) == [20_000_000]


def test_stream_seeds_are_a_pure_hash_of_their_keys():
    seen = {stream_seed(0, run, s, step, i) for run in range(3) for s in STREAMS for step in range(3) for i in range(8)}
    assert len(seen) == 3 * len(STREAMS) * 3 * 8 and all(0 <= x < 2**31 for x in seen)
    assert stream_seed(0, 0, "grpo", 0, 0) == 1_610_069_009  # fixed forever: a recipe's tasks must not drift
    with pytest.raises(ValueError, match="stream must be one of"):
        stream_seed(0, 0, "eval", 0, 0)
