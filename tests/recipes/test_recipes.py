"""Recipes: every shipped one validates and round-trips; every bad one fails with a RecipeError a person can act on."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memrl.cli import main
from memrl.recipes.schema import Recipe, RecipeError, dump, load_recipe, read_yaml, shipped_recipes
from memrl.rl.streams import eval_sample_seeds

EXPERIMENTS = ("experiments/mem1-n2", "experiments/memsearcher-n2", "experiments/full-context-n2")
PAPER_RECIPES = ("mem1", "memsearcher", "search-r1")


# ---------------------------------------------------------------- shipped recipes


def test_shipped_recipes_include_papers_and_experiments():
    names = shipped_recipes()
    assert {"quickstart", *PAPER_RECIPES, *EXPERIMENTS, "experiments/grpo-gain", "experiments/searchqa"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipe_validates_and_round_trips(name, tmp_path):
    recipe = load_recipe(name)
    path = tmp_path / "dumped.yaml"
    path.write_text(dump(recipe))
    again = load_recipe(path)
    assert again == recipe
    assert again.model_dump(mode="json") == recipe.model_dump(mode="json")


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipe_sets_every_key_it_means(name):
    """A shipped file names only schema keys (no silently ignored extras) and its own name."""
    raw = read_yaml(name)
    assert raw["name"] == load_recipe(name).name
    assert set(raw) <= set(Recipe.model_fields)


def test_experiment_recipes_differ_only_in_the_agent():
    """Same compute budget: steps, tasks, group size, tokens, model and env are identical across the three."""
    dumps = {}
    for name in EXPERIMENTS:
        d = load_recipe(name).model_dump(mode="json")
        d.pop("name")
        d["agent"].pop("name")
        d["train"].pop("baseline_agent")
        dumps[name] = d
    first = dumps[EXPERIMENTS[0]]
    assert all(d == first for d in dumps.values())
    assert first["env"] == {**first["env"], "id": "memrl/KBQA-v0", "objectives": 2}
    assert first["env"]["kwargs"]["min_hops"] >= 1
    assert first["train"]["eval_objectives"] == [1, 2, 4, 8, 16]
    assert first["sft"]["steps"] > 0
    assert {load_recipe(n).agent.name for n in EXPERIMENTS} == {"mem1", "memsearcher", "full_context"}


def test_experiment_recipes_train_with_the_grpo_gain_recipe():
    """The comparison trains every agent the way experiments/grpo-gain improved its SFT warm start: the same
    model, task, SFT, learner and GRPO settings; only the budgets that N = 16 needs (tokens, memory, window) and
    the evals differ."""
    gain = load_recipe("experiments/grpo-gain").model_dump(mode="json")
    ours = load_recipe(EXPERIMENTS[0]).model_dump(mode="json")
    for section in ("model", "env", "algorithm", "learner", "sft"):
        assert ours[section] == gain[section], section
    assert ours["train"]["steps"] == gain["train"]["steps"]
    assert ours["rollout"]["temperature"] == gain["rollout"]["temperature"]
    assert ours["train"]["sweep_tasks"] >= 32
    assert ours["train"]["eval_max_tokens"] > ours["rollout"]["max_tokens"]


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_point_at_a_local_model_dir(name):
    """memrl never downloads weights: GPU recipes name a directory the user provides."""
    recipe = load_recipe(name)
    assert recipe.model.name.startswith("/")
    assert recipe.env.id == "memrl/SearchQA-v0"
    assert recipe.resources.gpus_per_worker >= 1


def test_experiment_recipe_by_name_equals_by_path():
    path = Path(__file__).resolve().parents[2] / "recipes" / "experiments" / "mem1-n2.yaml"
    assert load_recipe("experiments/mem1-n2") == load_recipe(path)


def test_recipe_list_shows_experiments(capsys):
    assert main(["recipe", "list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "experiments/memsearcher-n2" in listed and "quickstart" in listed


# ---------------------------------------------------------------- bad recipes

NOT_FOUND = object()  # the recipe file is not created
NOT_UTF8 = b"name: caf\xe9\n"

# (case id, YAML text / NOT_FOUND / bytes, --set overrides, substrings the RecipeError must contain)
BAD_RECIPES = [
    ("unknown-top-level-key", "trian: {steps: 3}", [], ["unknown key 'trian'", "did you mean train or retrieval?"]),
    ("misspelled-nested-key", "algorithm: {grop_size: 8}", [],
     ["unknown key 'algorithm.grop_size'", "did you mean group_size?", "valid keys here: advantage, group_size"]),
    ("wrong-type", "train: {steps: ten}", [], ["train.steps", "valid integer", "'ten'"]),
    ("out-of-range", "algorithm: {group_size: 1}", [], ["algorithm.group_size", "greater than or equal to 2"]),
    ("bad-literal", "agent: {name: mem2}", [], ["agent.name", "did you mean 'mem1'", "registered: full_context, mem1, memsearcher", "'mem2'"]),
    ("bad-literal-advantage", "algorithm: {advantage: ppo}", [],
     ["algorithm.advantage", "registered: drgrpo, grpo, rloo"]),
    ("section-not-mapping", "algorithm: 3", [], ["algorithm:", "valid dictionary"]),
    ("non-string-key", "train: {1: 2}", [], ["train.1", "Keys should be strings"]),
    ("dual-clip-not-above-1", "algorithm: {dual_clip: 1.0}", [], ["algorithm.dual_clip", "greater than 1"]),
    ("packed-with-full-context", "agent: {name: full_context}\nlearner: {packed: true}", [],
     ["learner.packed", "full_context", "set learner.packed: false"]),
    ("output-dir-placeholder", "output_dir: runs/{nam}", [], ["output_dir", "{name}"]),
    ("set-without-equals", "{}", ["train.steps"], ["--set expects key.path=value", "'train.steps'"]),
    ("set-unknown-path", "{}", ["algorithm.grop_size=8"], ["algorithm.grop_size", "did you mean group_size?"]),
    ("set-unknown-section", "{}", ["trainer.steps=8"], ["unknown key 'trainer'", "did you mean train, learner or retrieval?"]),
    ("set-into-a-value", "model: {name: smollm2-135m-instruct}", ["model.name.x=1"], ["--set model.name.x", "'model.name' is a value"]),
    ("set-empty-key-part", "{}", ["train..steps=3"], ["train..steps", "empty part"]),
    ("set-bad-yaml-value", "{}", ["train.eval_objectives=[1, 2"], ["--set train.eval_objectives", "not valid YAML"]),
    ("yaml-syntax-error", "train: {steps: 3", [], ["not valid YAML", "line"]),
    ("yaml-list", "- model\n- env\n", [], ["must be a mapping of sections", "list"]),
    ("yaml-scalar", "quickstart\n", [], ["must be a mapping of sections", "str"]),
    ("empty-file", "# only a comment\n", [], ["is empty", "{}"]),
    ("missing-file", NOT_FOUND, [], ["does not exist"]),
    ("not-utf8", NOT_UTF8, [], ["not UTF-8"]),
]


def _write(tmp_path: Path, content) -> Path:
    path = tmp_path / "bad.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not NOT_FOUND:
        path.write_text(content)
    return path


@pytest.mark.parametrize(("content", "overrides", "expected"), [c[1:] for c in BAD_RECIPES],
                         ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_error_names_the_key(tmp_path, content, overrides, expected):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, content), overrides)
    message = str(exc.value)
    for part in expected:
        assert part in message, f"{part!r} missing from:\n{message}"
    assert "Traceback" not in message


def test_unknown_shipped_name_suggests_the_closest():
    with pytest.raises(RecipeError, match=r"no recipe named 'quikstart'; did you mean quickstart\?"):
        load_recipe("quikstart")
    with pytest.raises(RecipeError, match=r"did you mean experiments/mem1-n2"):
        load_recipe("experiments/mem1-n3")


def test_yaml_name_of_a_shipped_recipe_hints_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"named without \.yaml: 'quickstart'"):
        load_recipe("quickstart.yaml")


def test_cli_validate_bad_recipe_exits_2_without_traceback(tmp_path):
    bad = _write(tmp_path, "algorithm: {grop_size: 8}\n")
    memrl = Path(sys.executable).parent / "memrl"
    proc = subprocess.run([str(memrl), "recipe", "validate", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "algorithm.grop_size" in proc.stderr and "group_size" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- property: mutations fail cleanly

QUICKSTART = read_yaml("quickstart")
KEYS = st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
                 st.sampled_from(["name", "steps", "group_size", "kwargs", "packed", "lr"]), st.integers(-3, 3))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["full_context", "mem1", "1e-6", "{name}", "{x}"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(KEYS, inner, max_size=3)), max_leaves=6)


def _paths(node: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in node.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


def _parent(data: dict, path: tuple) -> dict:
    for key in path[:-1]:
        data = data[key]
    return data


@st.composite
def mutated_quickstart(draw) -> dict:
    data = copy.deepcopy(QUICKSTART)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        op = draw(st.sampled_from(["rename", "retype", "delete", "insert"]))
        if op == "insert" or not paths:
            sections = [()] + [p for p in paths if isinstance(_parent(data, p).get(p[-1]), dict)]
            where = draw(st.sampled_from(sections))
            node = _parent(data, (*where, None))
            node[draw(KEYS)] = draw(VALUES)
            continue
        path = draw(st.sampled_from(paths))
        parent = _parent(data, path)
        if op == "rename":
            key = path[-1]
            new = draw(st.one_of(KEYS, st.just(str(key)[:-1]), st.just(str(key) + "s"), st.just(str(key).upper())))
            parent[new] = parent.pop(key)
        elif op == "retype":
            parent[path[-1]] = draw(VALUES)
        else:
            del parent[path[-1]]
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_quickstart())
def test_mutated_recipe_validates_or_raises_recipe_error_naming_a_key(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        try:
            load_recipe(path)
        except RecipeError as exc:
            header, *problems = str(exc).splitlines()
            assert re.fullmatch(r".*mutated\.yaml: \d+ problem\(s\)", header), str(exc)
            assert problems, str(exc)
            keys = [k for k in {str(k) for k in data} | set(Recipe.model_fields) if k]
            for line in problems:  # each problem is located at a key path of the recipe
                assert line.startswith("- ") and (any(k in line for k in keys) or "''" in line), str(exc)


def test_the_schemas_variant_names_are_the_registries():
    """A variant is added by registering it; the schema allows exactly the registered names, with did-you-mean."""
    from memrl import registry

    # memrl's own names (a plugin test may have registered more in this process)
    assert registry.AGENTS.builtin_names() == ["full_context", "mem1", "memsearcher"]
    assert registry.ADVANTAGES.builtin_names() == ["drgrpo", "grpo", "rloo"]
    assert registry.POLICY_LOSSES.builtin_names() == ["gspo", "ppo"]
    assert registry.WEIGHT_SYNCS.builtin_names() == ["adapter", "blob", "native"]
    for reg in registry.REGISTRIES:  # every built-in name resolves to what the code calls
        assert all(callable(reg.get(n)) for n in reg.builtin_names()), reg.kind
    with pytest.raises(RecipeError, match="algorithm.loss_agg.*unknown loss aggregation 'mean'.*token_mean"):
        load_recipe("quickstart", ["algorithm.loss_agg=mean"])
    with pytest.raises(RecipeError, match="agent.name.*did you mean 'mem1'"):
        load_recipe("quickstart", ["agent.name=mem2"])
    with pytest.raises(RecipeError, match="train.baseline_agent.*registered: full_context, mem1, memsearcher"):
        load_recipe("quickstart", ["train.baseline_agent=rag"])

    registry.AGENTS.register("test_runtime_agent", registry.AGENTS.get("memsearcher"))
    try:  # a name registered at run time is allowed (the schema checks at validation, not at import)
        assert load_recipe("quickstart", ["agent.name=test_runtime_agent"]).agent.name == "test_runtime_agent"
    finally:
        registry.AGENTS.unregister("test_runtime_agent")


def test_built_in_agents_take_no_settings_of_their_own():
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['memory_token'\] in agent \(did you mean memory_tokens\?\)"):
        load_recipe("quickstart", ["agent.memory_token=8"])


def test_validating_a_recipe_imports_no_torch():
    """Recipes are data: loading and validating every shipped recipe imports neither torch nor memrl's code."""
    code = ("import sys; from memrl.recipes.schema import load_recipe, shipped_recipes\n"
            "[load_recipe(r) for r in shipped_recipes()]\n"
            "heavy = [m for m in ('torch', 'vllm', 'ray', 'deepspeed', 'memrl.rl', 'memrl.agents', 'memrl.envs') "
            "if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    cli = subprocess.run([sys.executable, "-X", "importtime", "-m", "memrl.cli", "recipe", "validate", "quickstart"],
                         capture_output=True, text=True, check=True)
    assert "quickstart: valid" in cli.stdout
    assert not [ln for ln in cli.stderr.splitlines() if ln.rstrip().endswith((" torch", " vllm"))], cli.stderr[-2000:]


def test_recipes_import_nothing_from_rl_agents_or_envs():
    here = Path(__file__).resolve().parents[2] / "recipes"
    offenders = [f"{p.name}:{i}" for p in here.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"memrl.(rl|agents|envs)\b", line)]
    assert offenders == []


def test_defaults_are_declared_once_in_the_schema():
    """Components take their recipe section by keyword and declare no defaults of their own."""
    import dataclasses
    import inspect

    from memrl.agents import SamplingConfig
    from memrl.agents.base import Agent
    from memrl.rl.learner import Learner

    for fn, keys in ((Agent.__init__, ("max_observation_tokens", "memory_tokens")),
                     (Learner.__init__, ("learner", "algorithm", "rollout"))):
        params = inspect.signature(fn).parameters
        assert all(params[k].default is inspect.Parameter.empty for k in keys), fn
    fields = {f.name: f for f in dataclasses.fields(SamplingConfig)}
    assert all(fields[k].default is dataclasses.MISSING for k in ("max_tokens", "temperature"))


def test_sft_objectives_cycle_the_warm_starts_oracle_episodes_through_the_curriculums_n():
    """experiments/multihop warm-starts at N = 1, 2, 4 (task by task), the curriculum's N; empty = env.objectives."""
    from memrl.recipes.schema import load_recipe
    from memrl.rl.trainer import oracle_envs

    rc = load_recipe("experiments/multihop")
    assert rc.sft.objectives == [1, 2, 4] == rc.curriculum.objectives
    envs = oracle_envs(rc)
    assert [len(e.unwrapped.objectives()) if e.reset(seed=i) else 0 for i, e in enumerate(envs)] == [1, 2, 4] * 2 + [1, 2]
    plain = load_recipe("quickstart")
    assert {len(e.unwrapped.objectives()) if e.reset(seed=0) else 0 for e in oracle_envs(plain)} == {2}
    with pytest.raises(ValueError, match="sft.objectives must be N >= 1"):
        load_recipe("quickstart", ["sft.objectives=[0]"])


def test_held_out_evals_are_greedy_with_the_recipes_repetition_penalty():
    recipe = load_recipe("quickstart", ["train.eval_repetition_penalty=1.2", "train.eval_max_tokens=64"])
    assert recipe.eval_sampling == {"max_tokens": 64, "temperature": 0.0, "repetition_penalty": 1.2}
    assert Recipe().eval_sampling["repetition_penalty"] == 1.0  # off by default
    with pytest.raises(RecipeError, match="eval_repetition_penalty"):
        load_recipe("quickstart", ["train.eval_repetition_penalty=0.5"])
    assert eval_sample_seeds(recipe, [7, 8]) is None  # greedy: no per-episode seeds


def test_a_sampled_eval_gives_each_task_its_own_seed_that_moves_with_the_runs_seed():
    from memrl.agents import sampling_seed

    recipe = load_recipe("quickstart", ["train.eval_temperature=0.7", "seed=3"])
    assert recipe.eval_sampling["temperature"] == 0.7
    seeds = eval_sample_seeds(recipe, [100, 101, 102])
    assert seeds == [sampling_seed(3, 100), sampling_seed(3, 101), sampling_seed(3, 102)] and len(set(seeds)) == 3
    assert seeds == eval_sample_seeds(recipe, [100, 101, 102])  # repeats
    other = eval_sample_seeds(load_recipe("quickstart", ["train.eval_temperature=0.7", "seed=4"]), [100, 101, 102])
    assert not set(other) & set(seeds)
    with pytest.raises(RecipeError, match="eval_temperature"):
        load_recipe("quickstart", ["train.eval_temperature=-0.1"])
