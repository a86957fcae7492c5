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


def visible_lr(dtype=None) -> float:
    """A learning rate whose first Adam step (~lr per weight) changes every trained weight at `dtype`'s
    resolution: 1e-3 in fp32; bf16 weights of ~1 (norms) move only by steps above its 2^-7 spacing."""
    import torch

    from memrl.device import plan

    return {torch.float32: 1e-3, torch.bfloat16: 3e-2}[dtype or plan().dtype]
