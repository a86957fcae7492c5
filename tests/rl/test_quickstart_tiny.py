"""The quickstart recipe, CI-sized (tiny model, a few steps), end to end: every artifact it promises
exists, and the exported model gives the learner's greedy output in plain transformers and in vLLM."""

import json

import pytest
import torch

from memrl.agents import HFBackend, SamplingConfig, VLLMBackend
from memrl.models import load_tokenizer
from memrl.recipes.schema import RolloutCfg, load_recipe
from memrl.rl.metrics import read_metrics
from memrl.testing import check_mlflow_run, check_wandb_run

pytestmark = pytest.mark.slow

TINY = [
    "name=quickstart-tiny", "model.name=tiny:0", "agent.memory_tokens=16", "agent.max_observation_tokens=64",
    "rollout.max_tokens=8", "rollout.max_model_len=1024", "rollout.kv_cache_gib=1", "algorithm.group_size=2",
    "algorithm.tasks_per_step=2", "learner.lr=1e-3", "sft.steps=2", "sft.tasks_per_step=2", "train.steps=2",
    "train.eval_tasks=4", "train.sweep_tasks=2", "train.eval_objectives=[1,2]", "train.checkpoint_every=1",
    "resources.num_cpus=2", "logging.progress=false",
    "train.zero_shot_eval=true", "train.eval_every=1",  # the quickstart's evals, and zero-shot, at every point
    "curriculum.objectives=[1,2]", "curriculum.mode=mix",  # each task at N=1 or N=2, per-N rewards logged
    "train.control=true",  # the RL control at equal compute, after the run
    "logging.loggers=[tensorboard,wandb,mlflow]", "logging.wandb_mode=offline",  # every tracker, offline
]


def test_quickstart_tiny_writes_every_artifact_and_an_exported_model_that_matches_the_learner(tmp_path, ray_local,
                                                                                             chromium_dom):
    from memrl.rl.report import write_report
    from memrl.rl.trainer import Trainer

    out = tmp_path / "run"
    recipe = load_recipe("quickstart", [*TINY, f"output_dir={out}"])
    assert recipe.env.id == "memrl/KBQA-v0" and recipe.env.objectives == 2 and recipe.agent.name == "memsearcher"
    trainer = Trainer(recipe)
    try:
        summary = trainer.run()
        report = write_report(trainer)
        learner_weights = trainer.learner.state_dict()  # from learner rank 0 (a Ray actor)
        resumed_sweep = _sweep_resumes(trainer, out)
    finally:
        trainer.close()

    assert resumed_sweep
    recs = read_metrics(out / "metrics.jsonl")
    assert {"sft", "grpo"} <= {r["phase"] for r in recs}
    grpo = [r for r in recs if r["phase"] == "grpo"]
    for r in grpo:  # the curriculum's N per task: every task counted once, each N's reward logged
        ns = [n for n in (1, 2) if f"reward_n{n}" in r]
        assert ns and sum(r[f"tasks_n{n}"] for n in ns) == 2 and r["curriculum_max_n"] == 2
        assert r["episodes"] == 4 and all(0.0 <= r[f"reward_n{n}"] <= 1.0 for n in ns)
        assert 0.0 <= r["length_stop_rate"] <= 1.0
    assert any(r["length_stop_rate"] > 0 for r in grpo)  # a random tiny model at max_tokens 16 rarely closes a tag
    assert set(summary["evals"]) >= {"zero_shot", "after_sft", "step_1", "after_grpo", "sweep", "control",
                                     "answer_prior"}
    grpo_updates = recipe.train.steps * recipe.algorithm.minibatches
    control = [r for r in recs if r["phase"] == "control"]  # as many SFT optimizer steps as GRPO took
    assert summary["evals"]["control"]["optimizer_steps"] == len(control) == grpo_updates
    assert all(r["skipped"] == 0.0 and r["sft_loss"] > 0 for r in control)
    assert summary["evals"]["answer_prior"]["em"] == 0.0  # generated tasks: no training answer is a held-out one
    assert len(summary["evals"]["control"]["em_per_episode"]) == recipe.train.eval_tasks
    assert [p.name for p in (out / "handoff").glob("step_*")] == ["step_000000"]  # the warm start, kept
    assert grpo[0]["eval_em"] == summary["evals"]["step_1"]["em"]  # the mid-GRPO eval, also in the metrics
    for key in ("after_sft", "after_grpo"):  # per-episode EM on the same tasks: the gain's s.e. is paired
        assert len(summary["evals"][key]["em_per_episode"]) == summary["evals"][key]["episodes"]
    assert {(r["agent"], r["objectives"]) for r in summary["evals"]["sweep"]} == {
        ("memsearcher", 1), ("memsearcher", 2), ("full_context", 1), ("full_context", 2)}
    text = report.read_text()
    for needle in ("zero-shot", "after SFT", "after GRPO step 1", "after GRPO", "±", "GRPO vs SFT", "Time per phase",
                   "full_context", "paired standard error", "Control vs SFT", "GRPO vs control", "answer prior",
                   "the confirm set"):
        assert needle in text
    for png in ("reward_em_vs_step.png", "context_tokens_per_turn.png", "peak_context_vs_objectives.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png})" in text
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # W&B (offline run files) and MLflow (file store): the recipe, every metric as in metrics.jsonl, the artifacts
    run_files = ["report.md", "summary.json", "recipe.yaml", "viewer.html", "reward_em_vs_step.png",
                 "context_tokens_per_turn.png", "peak_context_vs_objectives.png"]
    wb = check_wandb_run(out, recipe.model_dump(mode="json"), recs)
    assert set(wb["artifacts"]["quickstart-tiny-results"]) == set(run_files)
    assert set(run_files) <= set(check_mlflow_run(out, recipe.model_dump(mode="json"), recs))
    assert json.loads((out / "summary.json").read_text())["model"] == str(out / "model")
    from memrl.rl import checkpoint

    ckpts = sorted((out / "checkpoints").glob("step_*"))  # every step (checkpoint_every=1), the newest 2 kept
    assert [p.name for p in ckpts] == ["step_000001", "step_000002"]
    assert [checkpoint.verify(p) for p in ckpts] == [None, None]  # every file there, at its manifest size
    assert checkpoint.latest(out / "checkpoints") == ckpts[-1]

    model_dir = out / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "README.md"):
        assert (model_dir / name).exists(), name
    assert "after_grpo" in (model_dir / "README.md").read_text()

    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    assert tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the mentor of Ana?"}],
                                     add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    cfg = SamplingConfig(max_tokens=16, temperature=0.0)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    exported = plain.state_dict()
    assert set(exported) == set(learner_weights)
    assert all(torch.equal(exported[k], learner_weights[k]) for k in exported)  # the export is the learner's weights
    want = HFBackend(plain, tok).generate([prompt], cfg)[0].token_ids
    engine = VLLMBackend(str(model_dir), rollout=RolloutCfg(max_model_len=512))
    assert engine.generate([prompt], cfg)[0].token_ids == want
    del engine

    assert "(viewer.html)" in text
    dom = chromium_dom(out / "viewer.html")  # the memory viewer, rendered by a real headless browser
    points = ["zero_shot", "after_sft", "step_1", "after_grpo", "sweep: memsearcher, N=1", "sweep: memsearcher, N=2",
              "sweep: full_context, N=1", "sweep: full_context, N=2", "control"]
    assert all(f">{p}</h2>" in dom for p in points) and dom.count('class="ep"') == 5 * 3 + 4 * 2
    assert dom.count('class="turn"') > dom.count('class="ep"')


def _sweep_resumes(trainer, out) -> bool:
    """A sweep killed during its last point, run again on the same weights, keeps the points it finished (rows and
    episodes as written, timings included) and measures only the missing one; rows measured on other weights
    (another optimizer step) are measured again."""
    from memrl.io import write_jsonl

    rows, episodes = read_metrics(out / "sweep_rows.jsonl"), read_metrics(out / "sweep_episodes.jsonl")
    assert [(r["agent"], r["objectives"]) for r in rows] == [(r["agent"], r["objectives"])
                                                              for r in trainer.evals["sweep"]]
    assert all(r["weights_step"] == trainer.learner.steps for r in rows)
    write_jsonl(out / "sweep_rows.jsonl", rows[:-1])  # killed before the last point's row was written
    again = trainer.sweep()
    last = (rows[-1]["agent"], rows[-1]["objectives"])
    assert again[:-1] == rows[:-1] and (again[-1]["agent"], again[-1]["objectives"]) == last
    kept = [e for e in episodes if (e["agent"], e["objectives"]) != last]
    redone = [e for e in read_metrics(out / "sweep_episodes.jsonl") if (e["agent"], e["objectives"]) == last]
    assert read_metrics(out / "sweep_episodes.jsonl")[:len(kept)] == kept  # the same records, not re-measured
    assert len(redone) == len([e for e in episodes if (e["agent"], e["objectives"]) == last])
    assert [e["em"] for e in redone] == [e["em"] for e in episodes if (e["agent"], e["objectives"]) == last]
    write_jsonl(out / "sweep_rows.jsonl", [{**r, "weights_step": r["weights_step"] - 1} for r in again])
    moved = trainer.sweep()  # rows of older weights: every point measured again
    assert len(moved) == len(rows) and all(r["weights_step"] == trainer.learner.steps for r in moved)
    assert all(a["wall_s"] != b["wall_s"] for a, b in zip(moved, again, strict=True))  # timed anew
    return True
