"""The training loop: zero-shot eval -> SFT warm start -> handoff -> multi-context GRPO -> eval -> export
[-> the RL control].

The handoff makes GRPO's gain GRPO's own: GRPO starts with a fresh optimizer (SFT's Adam moments do not carry
into the first updates) and, with `algorithm.kl_coef` > 0, a KL reference equal to the policy GRPO starts
from (the SFT result, not the base model). `train.control` then answers "is it RL, or just more SFT?": from
the same warm start, as many SFT optimizer steps on fresh oracle tasks as GRPO took, evaluated on the same
held-out tasks.

Each GRPO step: sample tasks (a deterministic data cursor) -> G rollouts per task on the vLLM workers
-> group-relative advantages -> minibatch updates on the DeepSpeed learner -> weight sync (versioned)
-> metrics -> checkpoint every N steps. Synchronous by default: rollouts of step t use the weights of step t
(`algorithm.max_staleness` / `partial_rollouts` overlap them: `grpo_step`).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from memrl.agents import SamplingConfig, make_agent, oracle_policy, run_episodes, sampling_seed
from memrl.agents.evaluate import eval_point, mean_per_turn, summarize, version_mix
from memrl.envs import build as build_env
from memrl.envs.baselines import answer_prior
from memrl.io import write_jsonl
from memrl.models import kv_bytes_per_token, load_tokenizer, resolve_model_dir
from memrl.plan import check_storage
from memrl.recipes.schema import Recipe, dump
from memrl.registry import plugin_modules
from memrl.rl import checkpoint
from memrl.rl.curriculum import Curriculum
from memrl.rl.export import export
from memrl.rl.learner_group import LearnerGroup, check_resources
from memrl.rl.metrics import MetricsWriter, read_metrics
from memrl.rl.phases import PhaseClock
from memrl.rl.placement import Placement
from memrl.rl.rollout import RolloutManager
from memrl.rl.services import start_retrieval, stop_retrieval
from memrl.rl.step import assign_advantages, merge_minibatch_metrics
from memrl.rl.streams import eval_sample_seeds, oracle_seeds, stream_seeds, task_seeds
from memrl.rl.sync import WeightSync, backend_name
from memrl.rl.trackers import make_trackers
from memrl.rl.viewer import Viewer

log = logging.getLogger(__name__)
PRIOR_DRAWS = 1000  # training tasks the answer-prior baseline learns its constant guess from


def oracle_envs(rc: Recipe) -> list:
    """The training envs of one SFT step's oracle episodes: `sft.tasks_per_step` of them, cycling through the N of
    `sft.objectives` task by task (env.objectives when empty)."""
    ns = rc.sft.objectives or [None]  # None: env.objectives
    return [build_env(rc.env.at(ns[i % len(ns)])) for i in range(rc.sft.tasks_per_step)]


class Trainer:
    """One training run from a recipe: starts Ray, the learner ranks and the rollout workers, and runs the
    phases of `run` (module docstring), checkpointing after each so that `resume=True` picks up where a
    killed run stopped. `close()` shuts the actors down."""

    def __init__(self, recipe: Recipe, resume: bool = False) -> None:
        self.recipe = recipe
        self.out = recipe.out
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.yaml").write_text(dump(recipe))
        self.model_dir = resolve_model_dir(recipe.model.name)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.kv_bytes = kv_bytes_per_token(self.model_dir)
        self.resume = resume
        self.clock = PhaseClock()  # summary.json's timings (rl/phases.py)
        self.evals: dict[str, dict] = {}
        self._start_ray()
        t0 = time.perf_counter()
        import ray

        check_resources(recipe, ray.cluster_resources())  # before any model loads
        check_storage(recipe, sum(1 for n in ray.nodes() if n.get("Alive")))
        self.services, recipe = start_retrieval(recipe)  # the envs then call the run's retrieval service
        self.recipe = recipe
        plugins = tuple(plugin_modules(recipe.plugins))  # every actor knows the names this run registered
        # actors get the model's name and resolve it on their own node (their cache, their untied copy)
        self.placement = Placement.create(recipe)  # split or colocated learner ranks and engines (rl/placement.py)
        self.learner = LearnerGroup(recipe.model.name, learner=recipe.learner, algorithm=recipe.algorithm,
                                    rollout=recipe.rollout, resources=recipe.resources, seed=recipe.seed,
                                    plugins=plugins, placement=self.placement)
        self.rollouts = RolloutManager(recipe.model.name, rollout=recipe.rollout, resources=recipe.resources,
                                       seed=recipe.seed, blob_source=self.learner.weights_blob,
                                       lora_rank=recipe.learner.lora_rank, plugins=plugins, placement=self.placement)
        self.weights = WeightSync(self.learner, self.rollouts,  # the owner of the weight version
                                  backend_name(recipe.rollout.weight_sync, recipe.learner.lora_rank),
                                  recipe.rollout.sync_timeout)
        startup = time.perf_counter() - t0
        self._pool = ThreadPoolExecutor(max_workers=1)  # the overlapped rollout (algorithm.max_staleness >= 1)
        self._ahead = None  # (step, future of its rollouts), started while the previous step learned
        self.step = 0
        self.sft_done = 0
        self.handoff_done = False
        ckpt = checkpoint.latest(self.out / "checkpoints") if resume else None
        if ckpt is not None:
            state = checkpoint.load(ckpt, self.learner)
            self.step, self.sft_done = state["step"], state.get("sft_done", 0)
            self.handoff_done = state.get("handoff_done", self.step > 0)
            self.evals, self.clock = state.get("evals", {}), PhaseClock(state.get("timings", {}))
            self.learner.steps = state.get("optimizer_steps", 0)
            self.weights.restore(state.get("version", 0))  # weight versions keep counting up across a resume
            log.info("resumed from %s (step %d)", ckpt, self.step)
            if self.handoff_done and recipe.algorithm.kl_coef > 0:  # the reference is the policy GRPO started from
                self.learner.load_reference(str(self._handoff_checkpoint() / "model"))
            self.sync_weights()
        elif resume:
            log.warning("--resume: no intact checkpoint under %s; starting fresh", self.out / "checkpoints")
        self.clock.add("startup", startup)  # a resumed run's startup adds to the killed run's
        if ckpt is None:  # a fresh start in an old run's directory: its finished sweep points are not ours
            (self.out / "sweep_rows.jsonl").unlink(missing_ok=True)
        self.viewer = Viewer(self.out / "viewer.html", recipe.name, resume=ckpt is not None)
        self.curriculum = Curriculum(recipe.curriculum, seed=recipe.seed) if recipe.curriculum.objectives else None
        if ckpt is not None and self.curriculum is not None and state.get("curriculum"):
            self.curriculum.load_state_dict(state["curriculum"])
        trackers = make_trackers(recipe.logging, self.out, recipe.model_dump(mode="json"), recipe.name,
                                 resume=ckpt is not None)
        self.metrics = MetricsWriter(self.out, trackers, resume_step=self.step if ckpt else None)

    def _start_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            res = self.recipe.resources
            ray.init(address=res.address, num_cpus=res.num_cpus if res.address is None else None,
                     include_dashboard=False, log_to_driver=True, configure_logging=False)

    # ------------------------------------------------------------------ phases
    def run(self) -> dict:
        """Every phase not done yet (a resumed run skips what its checkpoint holds): zero-shot eval, SFT, eval
        after SFT, the answer prior, the handoff, GRPO, eval after GRPO, the sweep, export, the control. Writes
        summary.json and returns it (evals, timings, steps, the exported model's path)."""
        rc = self.recipe
        if "zero_shot" not in self.evals and rc.train.zero_shot_eval:
            self.evals["zero_shot"] = self._eval("zero_shot")
        if self.sft_done < rc.sft.steps:
            self._timed("sft", self.sft)
            self._checkpoint()
        if rc.sft.steps and "after_sft" not in self.evals:
            self.evals["after_sft"] = self._eval("after_sft")
            self._checkpoint()
        if "answer_prior" not in self.evals:
            self.evals["answer_prior"] = self.answer_prior()
        if not self.handoff_done:
            self._timed("handoff", self.handoff)
        if self.step < rc.train.steps or "after_grpo" not in self.evals:  # a resumed finished run keeps its eval
            self._timed("grpo", self.grpo)
            self.evals["after_grpo"] = self._eval("after_grpo")
            self._checkpoint()
        if "sweep" not in self.evals:
            self.evals["sweep"] = self._timed("eval_sweep", self.sweep)
        summary = {"evals": self.evals, "timings": self.clock.timings, "timings_exclusive": True, "steps": self.step,
                   "out": str(self.out)}  # exclusive: a nested phase's time is not also in the outer one's
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        summary["model"] = str(self._timed("export", lambda: export(self.out, self.out / "model")))
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        if rc.train.control and "control" not in self.evals:
            self.evals["control"] = self._timed("control", self.control)
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary

    def _eval(self, key: str) -> dict:
        result = self._timed(f"eval_{key}", lambda: self.evaluate(self.recipe.agent.name, view=key))
        log.info("eval %s: EM %.3f ± %.3f, F1 %.3f, format errors/turn %.2f, mean turns %.2f", key, result["em"],
                 result["em_stderr"], result["f1"], result["format_error_rate"], result["mean_turns"])
        return result

    def _timed(self, name: str, fn):
        return self.clock.time(name, fn)

    @property
    def timings(self) -> dict[str, float]:
        """Wall seconds per phase so far, each second once (rl/phases.py)."""
        return self.clock.timings

    def sft(self) -> None:
        """Warm start on oracle trajectories in the agent's own multi-context format (CE on completions)."""
        for s in tqdm(range(self.sft_done, self.recipe.sft.steps), desc="SFT", disable=not self.recipe.logging.progress):
            self.sft_step("sft", s)
            self.sft_done = s + 1
        self.sync_weights()

    def sft_step(self, stream: str, s: int) -> dict:
        """One SFT optimizer step on oracle trajectories of the tasks of `stream` (sft or control) at step `s`."""
        rc = self.recipe
        agent = make_agent(self.tokenizer, rc.agent)
        envs = oracle_envs(rc)
        trajs = run_episodes(agent, envs, oracle_seeds(rc, stream, s), oracle_policy(agent, envs),
                             SamplingConfig(max_tokens=10**6, temperature=0.0))
        self.rollouts.sleep()  # colocated engines free the GPU while the learner trains (woken by the next sync)
        m = self.learner.train_step([t for t in trajs if not t.failed], sft=True, lr=rc.sft.lr)
        self.metrics.write({"phase": stream, "step": s, **m, "oracle_em": summarize(trajs)["em"]})
        return m

    def handoff(self) -> None:
        """SFT -> GRPO: a fresh optimizer (Adam's moments and the LR warm-up start over), the KL reference set to
        the current policy; with a KL or a control, the warm start is kept under handoff/ (a checkpoint outside
        checkpoints/, which export never picks)."""
        rc = self.recipe
        self.learner.reset_optimizer()
        self.learner.reset_reference()
        self.handoff_done = True
        if rc.train.control or rc.algorithm.kl_coef > 0:
            checkpoint.save(self.out / "handoff", 0, self.learner, self._state(), self.tokenizer, keep=1)
        self._checkpoint()

    def _handoff_checkpoint(self):
        ckpt = checkpoint.latest(self.out / "handoff")
        if ckpt is None:
            raise FileNotFoundError(f"no intact warm-start checkpoint under {self.out / 'handoff'} (written at the "
                                    "SFT -> GRPO handoff when algorithm.kl_coef > 0 or train.control)")
        return ckpt

    def control(self) -> dict:
        """The RL control at equal compute: from the warm start (handoff/), a fresh optimizer and as many SFT
        optimizer steps on fresh oracle tasks (stream "control") as GRPO took; then the held-out eval."""
        rc = self.recipe
        steps = self.learner.steps  # GRPO's optimizer steps: the handoff reset the count
        checkpoint.load(self._handoff_checkpoint(), self.learner)
        self.learner.reset_optimizer()
        for s in tqdm(range(steps), desc="control (SFT)", disable=not rc.logging.progress):
            self.sft_step("control", s)
        self.sync_weights()
        result = {**self._eval("control"), "optimizer_steps": steps}
        checkpoint.load(checkpoint.latest(self.out / "checkpoints"), self.learner)  # back to the trained policy
        self.learner.steps = steps
        self.sync_weights()
        return result

    def answer_prior(self) -> dict | None:
        """The answer-prior baseline beside every EM: the most frequent gold answer of PRIOR_DRAWS training tasks,
        given as the answer to every held-out objective (what memorizing the answer distribution scores); None for
        an env without gold answers (not a TaskEnv / ComposedEnv)."""
        rc = self.recipe
        train_env = build_env(rc.env.at())
        if not hasattr(train_env.unwrapped, "objectives"):
            return None
        train = stream_seeds(rc.env.train_seed_offset, rc.seed, "prior", 0, PRIOR_DRAWS)
        return answer_prior(train_env, train, build_env(rc.env.at(held_out=True)),
                            rc.held_out_seeds(rc.train.eval_tasks))

    def grpo(self) -> None:
        """GRPO steps from the current step to `train.steps`: metrics each step, held-out evals every
        `train.eval_every`, checkpoints every `train.checkpoint_every`."""
        rc = self.recipe
        bar = tqdm(range(self.step, rc.train.steps), desc="GRPO", disable=not rc.logging.progress,
                   initial=self.step, total=rc.train.steps)
        for step in bar:
            m = self.grpo_step(step)
            self.step = step + 1
            if rc.train.eval_every and self.step % rc.train.eval_every == 0 and self.step < rc.train.steps:
                ev = self.evals[f"step_{self.step}"] = self._eval(f"step_{self.step}")  # held-out curve, viewer point
                m.update({f"eval_{k}": v for k, v in ev.items() if isinstance(v, (int, float))})
            self.metrics.write(m)
            bar.set_postfix(reward=f"{m['reward_mean']:.2f}", em=f"{m['em']:.2f}")
            if self.step % rc.train.checkpoint_every == 0 and self.step < rc.train.steps:
                self._checkpoint()

    def grpo_step(self, step: int) -> dict:
        """Rollout, advantages, learning, weight sync. With `algorithm.max_staleness` >= 1 the rollout of step + 1
        runs on the engines (at the weights before this update) while this step learns: the next step then
        trains on trajectories one version old, corrected by the learner (`Learner._correct`). With
        `algorithm.partial_rollouts` the update does not wait for that rollout: it lands mid-episode, and the
        episodes' later turns (contexts) are sampled by the new weights, each context carrying its version."""
        al = self.recipe.algorithm
        t0 = time.perf_counter()
        ahead, self._ahead = self._ahead, None
        trajs, rstats, per_n = ahead[1].result() if ahead and ahead[0] == step else self._rollouts(step)
        t_roll = time.perf_counter() - t0
        if al.max_staleness and step + 1 < self.recipe.train.steps:
            ns = self._objectives(step + 1)  # drawn here: the curriculum is only touched by this thread
            self._ahead = (step + 1, self._pool.submit(self._rollouts, step + 1, ns))
        if trajs and all(t.failed for t in trajs):  # e.g. a retrieval service that stays down: never silently
            raise RuntimeError(f"every episode of GRPO step {step} failed; the first error: "
                               f"{trajs[0].info.get('error', 'unknown')}")
        summary = summarize(trajs)
        assign_advantages(trajs, al)
        live = [t for t in trajs if not t.failed]
        t1 = time.perf_counter()
        self.rollouts.sleep()  # colocated engines free the GPU for the learner; the sync's start wakes them
        size = max(1, -(-len(live) // al.minibatches))
        parts = [self.learner.train_step(live[i:i + size], version=self.version) for i in range(0, len(live), size)]
        lm = merge_minibatch_metrics(parts)
        t_learn = time.perf_counter() - t1
        if self._ahead is not None and not al.partial_rollouts:  # the engines take new weights once it is done
            wait([self._ahead[1]])
        # partial rollouts: the update lands now, mid-way through the overlapped rollout (VLLMBackend.pause)
        t_wait = time.perf_counter() - t1 - t_learn
        t_sync = self.sync_weights()
        rewards = [t.reward for t in trajs]
        dt = time.perf_counter() - t0
        curriculum = {}
        if self.curriculum is not None:
            by_n = {n: [t.reward for t in ts] for n, ts in per_n.items()}
            unlocked = self.curriculum.observe(by_n)
            curriculum = {**{f"reward_n{n}": sum(r) / len(r) for n, r in by_n.items()},
                          **{f"tasks_n{n}": len(r) / al.group_size for n, r in by_n.items()},
                          "curriculum_max_n": max(self.curriculum.unlocked), "curriculum_unlocked": float(unlocked)}
        return {**curriculum,
            "phase": "grpo", "step": step, "weight_version": self.version,
            "rollout_weight_version": min((t.weight_version for t in trajs), default=-1),
            **version_mix(trajs),
            "reward_mean": sum(rewards) / len(rewards), "reward_std": float(torch.tensor(rewards).std()),
            "episodes": len(rewards),
            "em": summary["em"], "f1": summary["f1"], "format_error_rate": summary["format_error_rate"],
            "length_stop_rate": summary["length_stop_rate"], "peak_context_tokens": summary["peak_context_tokens"],
            "mean_turns": summary["mean_turns"],
            "failed_episodes": summary["failed"], "worker_restarts": rstats.restarts,
            "rollout_tokens_per_s": rstats.tokens_per_s, "generated_tokens": rstats.generated_tokens,
            "time_rollout": t_roll, "time_learn": t_learn, "time_sync": t_sync, "time_step": dt,
            "time_wait_next_rollout": t_wait, "max_staleness_setting": float(al.max_staleness),
            "sync_share": t_sync / dt, **{k: v for k, v in lm.items() if k not in ("learner_time",)},
        }

    def _objectives(self, step: int) -> list[int]:
        """The N of each of this step's tasks: env.objectives, or what the curriculum draws."""
        rc = self.recipe
        return ([rc.env.objectives] * rc.algorithm.tasks_per_step if self.curriculum is None
                else self.curriculum.objectives(step, rc.algorithm.tasks_per_step))

    def _rollouts(self, step: int, ns: list[int] | None = None):
        """This step's G rollouts per task, each task at its N (`ns`, default `_objectives(step)`; one rollout call
        per N, a task's group shares its N). Returns trajectories, merged stats, and them by N."""
        rc = self.recipe
        seeds, groups = task_seeds(rc, step)
        sampling = SamplingConfig(rc.rollout.max_tokens, rc.rollout.temperature, rc.rollout.top_p)
        ns = self._objectives(step) if ns is None else ns
        per_task_n = [n for n in ns for _ in range(rc.algorithm.group_size)]
        samples = [sampling_seed(rc.seed, step, i) for i in range(len(seeds))]  # reproducible sampled rollouts
        trajs, stats, per_n = [None] * len(seeds), None, {}
        for n in sorted(set(ns)):
            idx = [i for i, m in enumerate(per_task_n) if m == n]
            part, st = self.rollouts.rollout([seeds[i] for i in idx], [groups[i] for i in idx], rc.env.at(n),
                                             rc.agent, sampling, env_timeout=rc.rollout.env_timeout,
                                             sample_seeds=[samples[i] for i in idx])
            for i, t in zip(idx, part, strict=True):
                trajs[i] = t
            per_n[n] = part
            stats = st if stats is None else stats.merge(st)
        return trajs, stats, per_n

    def evaluate(self, agent_name: str, objectives: int | None = None, tasks: int | None = None,
                 record: list | None = None, view: str | None = None) -> dict:
        """Greedy episodes on held-out task seeds (disjoint from training seeds); with `view`, the first few
        episodes go to the run's memory viewer (viewer.html) under that name."""
        rc = self.recipe
        seeds = rc.held_out_seeds(tasks or rc.train.eval_tasks)
        sampling = SamplingConfig(**rc.eval_sampling)
        trajs, stats = self.rollouts.rollout(seeds, list(range(len(seeds))), rc.env.at(objectives, held_out=True),
                                             rc.agent.named(agent_name), sampling, env_timeout=rc.rollout.env_timeout,
                                             sample_seeds=eval_sample_seeds(rc, seeds))
        out, records = eval_point(trajs, stats, self.kv_bytes, agent=agent_name,
                                  objectives=objectives or rc.env.objectives)
        out["context_tokens_per_turn"] = mean_per_turn(trajs)
        if view is not None:
            self.viewer.add(view, trajs, self.tokenizer)
        if record is not None:
            record.extend(records)
        return out

    def sweep(self) -> list[dict]:
        """Trained model: our agent and the baseline agent on the same held-out tasks, for each N."""
        rc = self.recipe
        agents = [rc.agent.name] + ([rc.train.baseline_agent] if rc.train.baseline_agent not in (None, rc.agent.name)
                                    else [])
        rows, episodes = self._sweep_done()
        done = {(r["agent"], r["objectives"]) for r in rows}
        for name in agents:
            for n in tqdm(rc.train.eval_objectives or [rc.env.objectives], desc=f"sweep {name}",
                          disable=not rc.logging.progress):
                if (name, n) in done:  # a resumed sweep keeps the points it finished on these weights
                    continue
                row = self.evaluate(name, n, tasks=rc.train.sweep_tasks, record=episodes, view=f"sweep: {name}, N={n}")
                rows.append({"agent": name, "objectives": n, "weights_step": self.learner.steps, **row})
                write_jsonl(self.out / "sweep_episodes.jsonl", episodes)  # episodes first: rows name finished points
                write_jsonl(self.out / "sweep_rows.jsonl", rows)
        return rows

    def _sweep_done(self) -> tuple[list[dict], list[dict]]:
        """The sweep points an earlier, killed process finished on the same weights (rows tagged with the optimizer
        step they were measured at) and their episodes; nothing when there are none or the weights moved on."""
        rows_path, eps_path = self.out / "sweep_rows.jsonl", self.out / "sweep_episodes.jsonl"
        if not rows_path.exists() or not eps_path.exists():
            return [], []
        rows = [r for r in read_metrics(rows_path) if r.get("weights_step") == self.learner.steps]
        done = {(r["agent"], r["objectives"]) for r in rows}
        episodes = [e for e in read_metrics(eps_path) if (e.get("agent"), e.get("objectives")) in done]
        if rows:
            log.info("sweep: resuming after %d finished points (%s)", len(rows),
                     ", ".join(f"{a} N={n}" for a, n in sorted(done)))
        return rows, episodes

    @property
    def version(self) -> int:
        """The weight version the engines hold (owned by `self.weights`)."""
        return self.weights.version

    def sync_weights(self) -> float:
        return self.weights.sync()

    def _state(self) -> dict:
        return {"sft_done": self.sft_done, "evals": self.evals, "timings": self.clock.so_far(),  # phases running too
                "optimizer_steps": self.learner.steps, "recipe": self.recipe.model_dump(mode="json"),
                "version": self.version, "handoff_done": self.handoff_done,
                "curriculum": self.curriculum.state_dict() if self.curriculum is not None else None}

    def _checkpoint(self) -> None:
        checkpoint.save(self.out / "checkpoints", self.step, self.learner, self._state(), self.tokenizer,
                        keep=self.recipe.train.keep_checkpoints)

    def close(self) -> None:
        """Stop the actors, then close the trackers with the run's files as artifacts (the report is written by
        then: `memrl train` writes it between `run` and `close`)."""
        self.metrics.close([self.out / f for f in ("report.md", "summary.json", "recipe.yaml", "viewer.html")]
                           + sorted(self.out.glob("*.png")))
        self._pool.shutdown(wait=True)
        stop_retrieval(self.services)
        self.weights.close()
        self.rollouts.shutdown()
        self.learner.close()
        self.placement.remove()


__all__ = ["Trainer", "asdict"]
