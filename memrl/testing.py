"""Small, fast, real pieces for tests and smoke runs of the training loop.

`LettersEnv` is a trivially learnable multi-turn text env: each turn the model's raw text is scored by
the share of its characters that are lowercase ASCII letters, and the episode reward is the mean over
turns. A random tiny model starts near 10% (26 of 256 bytes) and multi-context GRPO visibly raises it
within a few steps, which makes it the learning test of the whole loop (rollout -> loss -> sync).
"""

from __future__ import annotations

import time

import gymnasium as gym

from memrl.envs.core import AnyText


class LettersEnv(gym.Env):
    """The learning test's env (module docstring): `turns` turns, each scored by the share of lowercase ASCII
    letters in the action; the last turn ends the episode with the mean score as reward (and as `em`, `f1`),
    earlier turns give 0. No tools, no answer to find; `step_s` sleeps in every step to stand in for a slow tool."""

    metadata = {"render_modes": []}

    def __init__(self, turns: int = 2, step_s: float = 0.0, split: str = "train") -> None:
        # split: every episode is the same task (write letters): nothing to memorize, train and eval alike
        self.turns, self.step_s, self.split = turns, step_s, split  # step_s: seconds each step takes (a slow tool)
        self.observation_space = AnyText(10_000)
        self.action_space = AnyText(10_000)
        self._scores: list[float] = []

    def reset(self, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._scores = []
        info = {"tools": {}, "objectives": ["write lowercase letters"], "answers": [[]], "max_turns": self.turns}
        return "Write lowercase letters.", info

    def step(self, action: str):
        if self.step_s:
            time.sleep(self.step_s)
        text = action if isinstance(action, str) else ""
        self._scores.append(sum("a" <= c <= "z" for c in text) / max(1, len(text)))
        done = len(self._scores) >= self.turns
        reward = sum(self._scores) / len(self._scores) if done else 0.0
        info = {"turn": len(self._scores), "em": reward, "f1": reward}
        return "<information>Keep going.</information>", reward, done, False, info


class FaultyEnv(LettersEnv):
    """LettersEnv that misbehaves on chosen seeds: raises, hangs, or returns a non-string observation."""

    def __init__(self, turns: int = 2, fault: str = "raise", bad_seeds: tuple[int, ...] = (1,),
                 hang_s: float = 30.0, split: str = "train") -> None:
        super().__init__(turns, split=split)
        self.fault, self.bad_seeds, self.hang_s = fault, tuple(bad_seeds), hang_s
        self._bad = False

    def reset(self, seed: int | None = None, options: dict | None = None):
        self._bad = seed in self.bad_seeds
        return super().reset(seed=seed, options=options)

    def step(self, action: str):
        """On a bad seed: `fault` "raise" raises RuntimeError, "hang" sleeps `hang_s` seconds then steps
        normally, "non_string" returns a dict observation (reward 0, not done); otherwise LettersEnv's step."""
        if self._bad:
            if self.fault == "raise":
                raise RuntimeError("tool backend exploded")
            if self.fault == "hang":
                import time

                time.sleep(self.hang_s)
            if self.fault == "non_string":
                return {"not": "a string"}, 0.0, False, False, {}
        return super().step(action)


LETTERS_RECIPE = [
    "name=letters", "env.objectives=1", "env.kwargs={}", "train.eval_objectives=[]", "model.name=tiny:0",
    "env.id=memrl.testing:LettersEnv", "agent.name=memsearcher", "agent.memory_tokens=16", "rollout.max_tokens=16",
    "rollout.max_model_len=1024", "rollout.kv_cache_gib=1", "algorithm.group_size=4", "algorithm.tasks_per_step=8",
    "learner.lr=3e-3", "learner.zero_stage=2", "algorithm.format_penalty=false", "train.eval_tasks=16",
    "train.checkpoint_every=4", "train.baseline_agent=null", "sft.steps=0", "resources.num_cpus=2",
    "logging.progress=false", "algorithm.minibatches=1", "rollout.temperature=0.8",  # not the quickstart's tuning
    "algorithm.reward=em", "train.zero_shot_eval=true", "train.eval_every=0", "train.control=false",
]


def letters_recipe(out, steps: int, **extra):
    """The quickstart recipe turned into LettersEnv on the tiny model (the loop's learning tests), run under `out`;
    `extra` are more `key=value` overrides."""
    from memrl.recipes.schema import load_recipe

    sets = [*LETTERS_RECIPE, f"output_dir={out}", f"train.steps={steps}"]
    return load_recipe("quickstart", sets + [f"{k}={v}" for k, v in extra.items()])


def learner_sections(**keys) -> dict:
    """The recipe sections a `Learner` is built from (learner, algorithm, rollout), schema defaults except
    `keys`, each routed to the section that declares it: `Learner(model, **learner_sections(lr=1e-3))`."""
    from memrl.recipes.schema import AlgorithmCfg, LearnerCfg, RolloutCfg

    classes = {"learner": LearnerCfg, "algorithm": AlgorithmCfg, "rollout": RolloutCfg}
    unknown = set(keys) - {f for cls in classes.values() for f in cls.model_fields}
    if unknown:
        raise ValueError(f"no learner, algorithm or rollout key named {sorted(unknown)}")
    return {name: cls(**{k: v for k, v in keys.items() if k in cls.model_fields}) for name, cls in classes.items()}


def float_tolerance(dtype=None) -> float:
    """Relative agreement to expect between two computations of the same quantity that differ only in
    summation order (micro-batching, packing), in `dtype` (default: the device's, `memrl.device`): fp32 1e-5;
    bf16 2e-3 (an H200 run of these tests measured 1.1e-4 to 4.9e-4 where fp32 gives ~1e-7)."""
    import torch

    from memrl.device import plan

    return {torch.float32: 1e-5, torch.bfloat16: 2e-3}[dtype or plan().dtype]


def weight_tolerance(dtype=None) -> float:
    """Relative agreement to expect between two learners' weights after the same update from the same stored
    weights: fp32 as `float_tolerance`; bf16 one bf16 spacing (2^-7 relative), since a checkpoint written in bf16 drops
    the low bits of the fp32 master weights that DeepSpeed's bf16 optimizer keeps (an H200 run measured exactly that
    one spacing, 0.0078 at a weight of 1.04)."""
    import torch

    from memrl.device import plan

    return {torch.float32: float_tolerance(torch.float32), torch.bfloat16: 2.0**-7}[dtype or plan().dtype]


def visible_lr(dtype=None) -> float:
    """A learning rate whose first Adam step (~lr per weight) changes every trained weight at `dtype`'s
    resolution: 1e-3 in fp32; bf16 weights of ~1 (norms) move only by steps above its 2^-7 spacing."""
    import torch

    from memrl.device import plan

    return {torch.float32: 1e-3, torch.bfloat16: 3e-2}[dtype or plan().dtype]


def read_wandb_offline(run_dir) -> dict:
    """What an offline W&B run holds, read back from its `run-*.wandb` file (a LevelDB-style log of protobuf
    `Record`s: a 7-byte header, 32 KiB blocks, each record chunk with a 7-byte header): {"config": the run's config
    as a dict, "history": one dict per `log` call (values JSON-decoded), "artifacts": {name: [file paths]},
    "files": [saved file paths]}. wandb 0.31 no longer ships a reader for its own files."""
    import json
    import struct
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2 as pb

    data = next(Path(run_dir).glob("run-*.wandb")).read_bytes()
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:
            pos += left - 7
            continue
        chunk += data[pos:pos + n]
        pos += n
        if kind in (1, 4):  # FULL or LAST: the record is complete
            records.append(chunk)
            chunk = b""
    out: dict = {"config": {}, "history": [], "artifacts": {}, "files": []}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update
                                  if not i.key.startswith("_")})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "artifact":
            out["artifacts"][rec.artifact.name] = [m.path for m in rec.artifact.manifest.contents]
        elif kind == "files":
            out["files"] += [f.path for f in rec.files.files]
    return out


def check_wandb_run(out, recipe, metrics) -> dict:
    """The offline W&B run under `out`: config = the recipe, each metrics record's numbers logged once at its
    phase's step, and the artifacts. Returns what it read."""
    from memrl.rl.trackers import numbers

    (run_dir,) = list((out / "wandb").glob("offline-run-*"))
    wb = read_wandb_offline(run_dir)
    assert wb["config"]["name"] == recipe["name"] and wb["config"]["algorithm"] == recipe["algorithm"]
    for rec in metrics:
        phase, step = rec.get("phase", "train"), rec["step"]
        rows = [h for h in wb["history"] if h.get(f"{phase}/step") == step]
        assert len(rows) == 1, (phase, step)
        assert {k: rows[0][f"{phase}/{k}"] for k in numbers(rec)} == numbers(rec)
    return wb


def check_mlflow_run(out, recipe, metrics) -> list[str]:
    """The MLflow file store under `out/mlruns`: the recipe (artifact and params), every metric at its step, and
    the artifact names (returned)."""
    import json
    import os

    from mlflow.tracking import MlflowClient

    from memrl.rl.trackers import numbers

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("memrl").experiment_id])
    assert run.data.params["name"] == recipe["name"] and run.data.params["learner.lr"] == json.dumps(recipe["learner"]["lr"])
    for rec in metrics:
        phase = rec.get("phase", "train")
        for k, v in numbers(rec).items():
            assert (rec["step"], v) in [(m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                                            f"{phase}/{k}")]
    local = client.download_artifacts(run.info.run_id, "recipe.json", str(out / "mlflow_download"))
    assert json.loads(open(local).read()) == recipe
    return [a.path for a in client.list_artifacts(run.info.run_id)]


def LiveServer(app, port: int):  # noqa: N802 - the tests' name for it
    """uvicorn serving `app` on 127.0.0.1:`port` in a daemon thread (`memrl.envs.server.BackgroundServer`)."""
    from memrl.envs.server import BackgroundServer

    return BackgroundServer(app, port)
