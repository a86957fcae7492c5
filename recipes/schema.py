"""The recipe schema: every key is defined once here, with its description, and read by code.

A recipe is data: this module imports no model, engine or env code (nor torch). Names that code builds (agents,
advantage estimators, loss aggregations, policy losses) are checked against `memrl.registry` when a recipe is
validated, with the same did-you-mean errors as unknown keys; a recipe's `plugins` (modules that register
more names) are imported first.

`load_recipe(name_or_path, overrides)` reads YAML (a shipped recipe by name, or a path), applies
`--set a.b=c` overrides, and validates. Mistakes raise `RecipeError` naming the key, where it is, and
the closest valid keys; a wrong type names the expected type.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from memrl import registry
from memrl.registry import REWARD_SCORES


def one_of(reg: registry.Registry) -> Any:
    """A string the registry `reg` can build, checked when the recipe is validated (so names registered by
    plugins count): the schema allows exactly what the code can build."""
    return Annotated[str, AfterValidator(reg.check)]


AgentName = one_of(registry.AGENTS)


class Section(BaseModel):
    """A recipe section: unknown keys are errors (named, with the valid ones), assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelCfg(Section):
    """The model to train: a packaged name, `tiny:SEED` (tests) or a Hugging Face directory."""

    name: str = Field("smollm2-135m-instruct", description="model name (smollm2-135m-instruct, tiny:SEED) or HF dir")


class EnvCfg(Section):
    """The task: one registered env (its kwargs), composed to `objectives` per episode, and where the training,
    tuning and confirmation tasks come from (split + seed offsets)."""

    id: str = Field("memrl/KBQA-v0", description="registered env id of ONE objective")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor kwargs of that env; memrl adds "
                                   "split=train for training tasks unless `split` is given here")
    eval_kwargs: dict[str, Any] = Field(default_factory=dict, description="kwargs merged over `kwargs` for "
                                        "held-out evaluation, after memrl's split=eval (set split here only for a "
                                        "separate test file, e.g. {dataset: test.jsonl, split: all})")
    objectives: int = Field(1, ge=1, le=64, description="objectives per episode at training (MEM1 composition)")
    max_turns: int | None = Field(None, ge=1, description="turn cap of a composed episode (default: per env)")
    aggregate: Literal["mean", "sum"] = Field("mean", description="how per-objective rewards combine")
    train_seed_offset: int = Field(0, ge=0, description="entropy of the training task stream, mixed with the run "
                                   "seed (rl/streams.py): the SFT, GRPO and control tasks")
    tune_seed_offset: int = Field(20_000_000, ge=0, description="the tuning set: held-out (split eval) tasks "
                                  "from this seed on, to choose settings on (train.held_out: tune)")
    eval_seed_offset: int = Field(10_000_000, ge=0, description="the confirmation set: held-out (split eval) tasks "
                                  "from this seed on, the reported results (train.held_out: confirm)")

    @model_validator(mode="after")
    def _held_out_is_not_training(self) -> EnvCfg:
        train, held = self.at().kwargs, self.at(held_out=True).kwargs
        if held == train or (train.get("split") == "all" and {k: v for k, v in held.items() if k != "split"}
                             == {k: v for k, v in train.items() if k != "split"}):
            raise ValueError(f"env: held-out tasks would come from the training tasks (training kwargs {train}, "
                             f"held-out kwargs {held}): leave `split` to memrl (train / eval), or give eval_kwargs "
                             "another dataset")
        if self.tune_seed_offset == self.eval_seed_offset:
            raise ValueError("env.tune_seed_offset equals env.eval_seed_offset: the tuning and confirmation sets "
                             "must be different tasks")
        return self

    def at(self, objectives: int | None = None, held_out: bool = False) -> EnvCfg:
        """This section at `objectives` composed objectives when given (sweeps, curricula), with the split of
        its tasks in `kwargs`: "train" (unless `kwargs` names one), or for `held_out` "eval" with `eval_kwargs`
        merged over."""
        kwargs = {"split": "train", **self.kwargs}
        if held_out:
            kwargs = {**kwargs, "split": "eval", **self.eval_kwargs}
        update: dict = {"kwargs": kwargs}
        if objectives is not None:
            update["objectives"] = objectives
        return self.model_copy(update=update)


class AgentCfg(Section):
    """How an episode becomes per-turn contexts. Keys beyond these are the agent's own settings, passed to its
    constructor by keyword (a registered agent's; memrl's built-in agents take none)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: AgentName = Field("memsearcher", description="agent type: mem1, memsearcher, full_context, or one "
                            "registered in memrl.registry.AGENTS (plugins) / given as 'module:Class'")
    max_observation_tokens: int = Field(256, ge=16, description="observation tokens kept per turn")
    memory_tokens: int = Field(256, ge=8, description="memory budget (memsearcher) in tokens")

    @model_validator(mode="after")
    def _own_settings(self) -> AgentCfg:
        extra = sorted(self.model_extra or {})
        if extra and self.name in registry.AGENTS.builtin_names():
            valid = list(type(self).model_fields)
            close = [c for k in extra for c in difflib.get_close_matches(k, valid, n=1, cutoff=0.5)]
            hint = f" (did you mean {_either(close)}?)" if close else ""
            raise ValueError(f"unknown key(s) {extra} in agent{hint}: valid keys here: {', '.join(valid)} (the "
                             f"built-in agent {self.name!r} takes no settings of its own)")
        return self

    def settings(self) -> dict[str, Any]:
        """The agent's own settings (the section's keys beyond name and the two budgets)."""
        return dict(self.model_extra or {})

    def named(self, name: str | None = None) -> AgentCfg:
        """This section as agent `name` when given (the baseline of a sweep), with the same budgets."""
        return self if name is None else self.model_copy(update={"name": name})


class RolloutCfg(Section):
    """The rollout workers and their vLLM engines: sampling, budgets, timeouts and weight sync."""

    workers: int = Field(1, ge=1, description="RolloutWorker actors, each with its own vLLM engine")
    max_model_len: int = Field(4096, ge=256, description="engine context window")
    kv_cache_gib: float = Field(1.0, gt=0, description="KV cache per engine on CPU (GiB)")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM memory share on GPU")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards the model over (GPU only; "
                                      "resources.gpus_per_worker must cover it)")
    enforce_eager: bool | None = Field(None, description="skip CUDA graphs / torch.compile; null = eager on CPU "
                                       "(compiling takes minutes on 2 cores), compiled on GPU")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="engine dtype; auto = the device's (fp32 on CPU, bf16 on GPU, memrl.device)")
    max_num_seqs: int | None = Field(None, ge=1, description="sequences an engine decodes at once (null = vLLM's)")
    max_tokens: int = Field(128, ge=1, description="tokens per generation (one turn)")
    temperature: float = Field(1.0, ge=0, description="sampling temperature for training rollouts; the learner "
                               "takes its log-probs at the same temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling for training rollouts (< 1 makes the "
                         "PPO ratio inexact: the learner does not truncate its distribution)")
    env_timeout: float = Field(60.0, gt=0, description="seconds an env reset/step may take before its episode fails")
    rollout_timeout: float = Field(1800.0, gt=0, description="seconds a busy rollout worker may go without finishing "
                                   "a generation before the run stops as hung (a chunk that keeps generating may take "
                                   "any time); also the bound on a worker's start, restart and weight loads")
    sync_timeout: float = Field(600.0, gt=0, description="seconds a weight sync (and forming its transfer group) may "
                                "take on the learner ranks; past it the run stops with an error naming the ranks "
                                "that did not finish")
    weight_sync: one_of(registry.WEIGHT_SYNCS) = Field(
        "native", description="how new weights reach the engines (memrl.registry.WEIGHT_SYNCS, rl/sync.py): native = "
        "vLLM's weight-transfer protocol, layer by layer (memrl_gloo on CPU, nccl on GPU); blob = the whole model as "
        "one safetensors blob through Ray (fallback); adapter = the LoRA adapter only (what a run with "
        "learner.lora_rank > 0 uses in place of native or blob); or a registered one")


class AlgorithmCfg(Section):
    """Multi-context GRPO: advantages, the policy loss and its clip, KL / entropy terms, aggregation, minibatches,
    bounded staleness and the reward rule."""

    advantage: one_of(registry.ADVANTAGES) = Field("grpo", description="group-relative advantage estimator: grpo, "
                                                   "drgrpo, rloo, or a registered one (memrl.registry.ADVANTAGES)")
    group_size: int = Field(4, ge=2, description="rollouts per task (G)")
    tasks_per_step: int = Field(8, ge=1, description="distinct tasks per training step")
    clip_low: float = Field(0.2, ge=0, description="PPO ratio clip below 1")
    clip_high: float = Field(0.28, ge=0, description="PPO ratio clip above 1 (DAPO clip-higher)")
    dual_clip: float | None = Field(None, gt=1, description="dual-clip constant for negative advantages (e.g. 3)")
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the frozen reference; 0 = no reference model")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus")
    loss_agg: one_of(registry.AGGREGATIONS) = Field(
        "token_mean", description="how per-token losses are averaged (memrl.registry.AGGREGATIONS; "
        "seq_mean_token_sum_norm divides by rollout.max_tokens, the generation budget)")
    policy_loss: one_of(registry.POLICY_LOSSES) = Field(
        "ppo", description="the policy-gradient term (memrl.registry.POLICY_LOSSES): ppo = token-level clipped "
        "ratio; gspo = one ratio per context, the geometric mean of its tokens' (GSPO; its clip ranges are ~1e-3 "
        "wide: clip_low 3e-4, clip_high 4e-4 in the paper)")
    minibatches: int = Field(1, ge=1, description="optimizer steps per training step")
    max_staleness: int = Field(0, ge=0, description="weight versions a trajectory may lag the learner: 0 = synchronous "
                               "(on-policy, a mismatch is an error); 1 = the rollout of step t+1 overlaps learning "
                               "step t, and stale contexts are corrected (decoupled PPO, truncated at is_clip)")
    is_clip: float = Field(2.0, gt=0, description="truncation of the importance weight pi_prox / pi_behav of a stale "
                           "context's tokens (max_staleness > 0), and of pi_learner / pi_engine (old_logprobs: "
                           "recompute)")
    old_logprobs: Literal["auto", "engine", "recompute"] = Field(
        "auto", description="what the PPO ratio is taken against: engine = the sampling log-probs the engine "
        "reported; recompute = the learner's own before the update (its update's forward, detached), with each token's "
        "policy-gradient term weighted by min(pi_learner / pi_engine, is_clip) (truncated importance sampling: "
        "corrects the engine/learner mismatch of bf16 engines; the mismatch is logged as mismatch_logp_abs and "
        "mismatch_k3); auto = recompute on GPU and wherever the engine's dtype is not the learner's (a bf16 CPU "
        "engine beside the fp32 learner), engine otherwise (memrl.device.DevicePlan.recompute_old_logprobs)")
    partial_rollouts: bool = Field(False, description="with max_staleness >= 1: a weight update lands on the engines "
                                   "while the overlapped rollout is mid-way (its episodes' next turns use the new "
                                   "weights, each context keeps its own version) instead of waiting for it to end")
    format_penalty: bool = Field(True, description="reward 0 for episodes with a malformed turn (MemSearcher rule)")
    reward: Literal[REWARD_SCORES] = Field("em", description="the answer score that is the reward: em, or token "
                                           "f1 (MemSearcher); aggregated over objectives by env.aggregate")
    format_floor: float = Field(0.0, ge=0, le=1, description="reward of a well-formed, answered episode whose "
                                "score is 0 (MemSearcher: 0.1)")


    @model_validator(mode="after")
    def _check(self) -> AlgorithmCfg:
        if self.partial_rollouts and not self.max_staleness:
            raise ValueError("algorithm.partial_rollouts needs algorithm.max_staleness >= 1 (an update can only land "
                             "during a rollout that overlaps learning)")
        return self


class CurriculumCfg(Section):
    """A curriculum over N (objectives per episode): mix draws N per task, grow unlocks larger N as reward rises."""

    objectives: list[int] = Field(default_factory=list, description="N values (objectives per episode) to train "
                                  "on; empty = every task at env.objectives (see rl/curriculum.py)")
    mode: Literal["mix", "grow"] = Field("grow", description="mix: each task draws N from `objectives` (by "
                                         "`weights`); grow: start at the smallest N, unlock the next as reward rises")
    weights: list[float] | None = Field(None, description="mix: probability of each N (normalized; null = uniform)")
    promote_at: float = Field(0.5, ge=0, description="grow: unlock the next N when the largest unlocked N's mean "
                              "training reward over `window` steps reaches this")
    window: int = Field(2, ge=1, description="grow: steps the promotion reward is averaged over")

    @model_validator(mode="after")
    def _check(self) -> CurriculumCfg:
        if len(set(self.objectives)) != len(self.objectives) or any(n < 1 for n in self.objectives):
            raise ValueError(f"curriculum.objectives must be distinct N >= 1, got {self.objectives}")
        if self.weights is not None:
            if self.mode != "mix":
                raise ValueError("curriculum.weights applies to mode: mix only (grow draws uniformly from the "
                                 "unlocked N)")
            if len(self.weights) != len(self.objectives) or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"curriculum.weights needs one non-negative weight per N of curriculum.objectives "
                                 f"{self.objectives}, got {self.weights}")
        return self


class LearnerCfg(Section):
    """The DeepSpeed learner: ZeRO stage, optimizer, micro-batching, partial fine-tuning or LoRA, data-parallel ranks."""

    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon (its first step moves a weight by ~lr * g / (|g| + eps))")
    warmup_steps: int = Field(0, ge=0, description="linear LR warm-up (optimizer steps)")
    grad_clip: float = Field(1.0, gt=0, description="global gradient-norm clip")
    micro_batch_tokens: int = Field(4096, ge=64, description="token budget of one micro-batch (padded)")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    train_layers: int | None = Field(None, ge=0, description="train only the top K decoder blocks + lm_head "
                                     "(partial fine-tuning for small CPU budgets); null = all")
    packed: bool = Field(False, description="MEM1 packed mode: one forward per trajectory with a block mask")
    shared_prefix: bool = Field(True, description="run the prompt prefix every context of a micro-batch shares (the "
                                "chat template and system prompt) once, not once per context (same result, fewer "
                                "tokens; not with gradient_checkpointing or ZeRO-3)")
    ranks: int = Field(1, ge=1, description="data-parallel learner ranks (Ray actors; ZeRO shards over them)")
    step_timeout: float = Field(3600.0, gt=0, description="seconds one optimizer step, checkpoint save or load may "
                                "take on the ranks (also their torch.distributed collective timeout); past it the "
                                "run stops with an error naming the ranks that did not finish")
    lora_rank: int = Field(0, ge=0, description="train LoRA adapters of this rank instead of the weights (peft); only "
                           "the adapter is synced to the engines (vLLM LoRA) and exports merge it; 0 = full weights")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (the update is alpha / rank * B A)")
    lora_targets: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    description="module names that get adapters")

    @model_validator(mode="after")
    def _lora_alone(self):
        if self.lora_rank and self.train_layers is not None:
            raise ValueError("learner.lora_rank and learner.train_layers are two ways to train part of the model: "
                             "set one (train_layers: null for LoRA)")
        if self.lora_rank and self.zero_stage == 3:
            raise ValueError("learner.lora_rank needs learner.zero_stage 0-2 (the adapters are small; ZeRO-3 is not "
                             "supported with LoRA)")
        return self


class SFTCfg(Section):
    """The warm start: SFT steps on oracle trajectories written in the agent's own format."""

    steps: int = Field(0, ge=0, description="warm-start steps on oracle trajectories (0 = skip)")
    tasks_per_step: int = Field(8, ge=1)
    lr: float = Field(5e-5, gt=0)
    objectives: list[int] = Field(default_factory=list, description="N values (objectives per episode) the oracle "
                                  "episodes of each step cycle through, task by task (empty = env.objectives): a "
                                  "policy warm-started at one N has never seen the prompt of another (e.g. the N = 1 "
                                  "a curriculum starts at)")

    @model_validator(mode="after")
    def _check(self) -> SFTCfg:
        if any(n < 1 for n in self.objectives):
            raise ValueError(f"sft.objectives must be N >= 1, got {self.objectives}")
        return self


class TrainCfg(Section):
    """The run's schedule and evaluation: GRPO steps, held-out evals and sweep, checkpoints, the RL control."""

    steps: int = Field(10, ge=0, description="GRPO steps")
    zero_shot_eval: bool = Field(True, description="eval the untrained model first (off when a sweep covers it)")
    eval_every: int = Field(0, ge=0, description="eval on held-out tasks every K steps (0 = only at start/end)")
    eval_tasks: int = Field(32, ge=1, description="held-out tasks per eval")
    eval_objectives: list[int] = Field(default_factory=list, description="N swept at the end (memory vs baseline agent)")
    sweep_tasks: int = Field(16, ge=1, description="held-out tasks per point of the final sweep")
    eval_max_tokens: int | None = Field(
        None, ge=1, description="tokens per generation in held-out evals and the sweep (default rollout.max_tokens): "
        "room for N answers, and a memory, in one turn at large N")
    eval_repetition_penalty: float = Field(
        1.0, ge=1.0, description="repetition penalty of the greedy held-out evals and the sweep (1 = off; vLLM's "
        "and transformers' CTRL penalty over the prompt and the output); training rollouts never use one")
    eval_temperature: float = Field(
        0.0, ge=0.0, description="sampling temperature of the held-out evals and the sweep: 0 = greedy (every reported "
        "result); > 0 samples each episode with its own seed (the run's seed mixed with the task's), a diagnostic of "
        "what greedy decoding does")
    checkpoint_every: int = Field(5, ge=1, description="write a checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk")
    baseline_agent: AgentName | None = Field(
        "full_context", description="agent evaluated beside ours for the peak-context comparison")
    held_out: Literal["confirm", "tune"] = Field(
        "confirm", description="which held-out set the evals and the sweep use: tune while choosing settings "
        "(env.tune_seed_offset), confirm for results you report (env.eval_seed_offset); both are split eval")
    control: bool = Field(False, description="the RL control at equal compute: after GRPO, restart from the SFT "
                          "warm start (fresh optimizer) and take as many SFT optimizer steps, on fresh oracle tasks, "
                          "as GRPO took; evaluated on the same held-out tasks (evals.control)")


class ResourcesCfg(Section):
    """What the run asks of the Ray cluster (CPUs, GPUs per worker and learner rank) and where the cluster is."""

    num_cpus: int | None = Field(None, ge=1, description="CPUs given to a local Ray (default: all)")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_learner_rank: float = Field(1.0, gt=0, description="CPUs Ray reserves for each learner rank")
    gpus_per_learner_rank: float = Field(0.0, ge=0, description="GPUs of each learner rank (1 on a GPU cluster; "
                                         "0 trains on CPU); shared with a rollout engine only when colocated")
    placement: Literal["split", "colocated"] = Field(
        "split", description="split: learner ranks and rollout engines on GPUs of their own; colocated: learner rank i "
        "and engine i share one bundle (its GPU), the engine sleeping while the learner trains (rl/placement.py; "
        "needs rollout.workers = learner.ranks, tensor_parallel_size 1, algorithm.max_staleness 0)")
    gpu_memory_gib: float | None = Field(None, gt=0, description="memory of one GPU of the cluster: "
                                         "`memrl recipe plan` checks the learner and engines against it")
    address: str | None = Field(None, description="Ray address to join (None = start a local Ray)")


class RetrievalCfg(Section):
    """Retrieval as one service of the run (rl/services.py): replicas started as Ray actors, called over HTTP by
    every rollout worker's envs, instead of an index inside every worker."""

    serve: bool = Field(False, description="start the env's retriever (env.kwargs retriever / corpus / index / "
                        "encoder of memrl/SearchQA-v0) as a service of the run; the envs then call it over HTTP")
    replicas: int = Field(1, ge=1, description="servers (each builds or opens the index once); calls rotate over them")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs Ray reserves for each replica")
    port: int = Field(8300, ge=1024, le=65000, description="port of replica 0 on its node (replica i: port + i); a "
                      "replica Ray restarts comes back on the same port")
    start_timeout: float = Field(1800.0, gt=0, description="seconds the replicas may take to build or open the index")


class LoggingCfg(Section):
    """Progress bars and experiment trackers (metrics.jsonl is always written; rl/trackers.py)."""

    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        ["tensorboard"], description="where metrics go besides metrics.jsonl, any subset: tensorboard "
        "(<output_dir>/tensorboard), wandb, mlflow; each gets the recipe as config, every metric, and the report, "
        "plots and viewer as artifacts")
    project: str = Field("memrl", description="W&B project / MLflow experiment name (the run is `name`)")
    wandb_mode: Literal["online", "offline"] | None = Field(
        None, description="W&B mode; offline writes the run under <output_dir>/wandb for `wandb sync` later; "
        "null = W&B's default (WANDB_MODE, else online)")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (a server or database); null = a local "
                                   "file store under <output_dir>/mlruns")
    progress: bool = Field(True, description="tqdm progress bars")


class Recipe(Section):
    """A whole run: every section, the run's name, seed and output directory, and the plugin modules it needs."""

    plugins: list[str] = Field(default_factory=list, description="modules imported before the recipe is "
                               "validated and in every Ray actor of the run: they register agents, losses, "
                               "advantages or aggregations (memrl.registry) that the recipe names")
    name: str = Field("recipe", description="run name")
    seed: int = Field(0, description="replicates the experiment: the training task stream (SFT, GRPO and control "
                      "tasks, rl/streams.py), sampling (every rollout request), engine and learner seeds; the "
                      "held-out tasks stay those of env.eval_seed_offset / tune_seed_offset")
    output_dir: str = Field("runs/{name}", description="where metrics, checkpoints and the report go")
    model: ModelCfg = Field(default_factory=ModelCfg)
    env: EnvCfg = Field(default_factory=EnvCfg)
    agent: AgentCfg = Field(default_factory=AgentCfg)
    rollout: RolloutCfg = Field(default_factory=RolloutCfg)
    algorithm: AlgorithmCfg = Field(default_factory=AlgorithmCfg)
    learner: LearnerCfg = Field(default_factory=LearnerCfg)
    sft: SFTCfg = Field(default_factory=SFTCfg)
    curriculum: CurriculumCfg = Field(default_factory=CurriculumCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    resources: ResourcesCfg = Field(default_factory=ResourcesCfg)
    retrieval: RetrievalCfg = Field(default_factory=RetrievalCfg)
    logging: LoggingCfg = Field(default_factory=LoggingCfg)

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("plugins"), list):
            try:
                registry.import_plugins(str(m) for m in data["plugins"])
            except ImportError as exc:
                raise ValueError(f"plugins: {exc}") from None
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> Recipe:
        if self.learner.packed and self.agent.name == "full_context":
            raise ValueError("learner.packed: true applies to memory agents (mem1, memsearcher); full_context has "
                             "one context per episode: set learner.packed: false or change agent.name")
        if self.resources.placement == "colocated":
            problems = colocation_problems(self)
            if problems:
                raise ValueError("resources.placement: colocated " + "; ".join(problems))
        return self

    @field_validator("output_dir")
    @classmethod
    def _output_dir_formats(cls, value: str) -> str:
        try:
            value.format(name="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"output_dir may use only the placeholder {{name}} (e.g. runs/{{name}}); "
                             f"{value!r} fails: {exc!r}") from None
        return value

    @property
    def out(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    def held_out_seeds(self, count: int) -> list[int]:
        """Seeds of the first `count` held-out tasks of the set `train.held_out` (tune or confirm)."""
        env = self.env
        start = env.eval_seed_offset if self.train.held_out == "confirm" else env.tune_seed_offset
        return [start + i for i in range(count)]

    @property
    def eval_sampling(self) -> dict:
        """Keyword arguments of the held-out evals' SamplingConfig: `eval_max_tokens` a turn, the eval's temperature
        (greedy by default) and repetition penalty."""
        return {"max_tokens": self.eval_max_tokens, "temperature": self.train.eval_temperature,
                "repetition_penalty": self.train.eval_repetition_penalty}

    @property
    def eval_max_tokens(self) -> int:
        """Generation budget per turn of held-out evals (train.eval_max_tokens, else rollout.max_tokens)."""
        return self.train.eval_max_tokens or self.rollout.max_tokens


def colocation_problems(recipe) -> list[str]:
    """Why a recipe cannot be colocated (empty: it can), each naming the keys."""
    problems = []
    if recipe.rollout.workers != recipe.learner.ranks:
        problems.append(f"needs one rollout engine per learner rank (rollout.workers={recipe.rollout.workers}, "
                        f"learner.ranks={recipe.learner.ranks})")
    if recipe.rollout.tensor_parallel_size != 1:
        problems.append(f"needs rollout.tensor_parallel_size: 1 (got {recipe.rollout.tensor_parallel_size}): an "
                        "engine shares its GPU with one learner rank")
    if recipe.algorithm.max_staleness != 0:
        problems.append(f"needs algorithm.max_staleness: 0 (got {recipe.algorithm.max_staleness}): the engine sleeps "
                        "while the learner trains, so rollout and learning cannot overlap")
    return problems


class RecipeError(ValueError):
    """A recipe the schema rejects, explained for a person."""


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped as package data: `quickstart`, `experiments/mem1-n2`, ..."""
    root = resources.files("memrl.recipes")
    names = [p.name[:-5] for p in root.iterdir() if p.is_file() and p.name.endswith(".yaml")]
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith(("_", ".")):
            names += [f"{folder.name}/{p.name[:-5]}" for p in folder.iterdir() if p.is_file() and p.name.endswith(".yaml")]
    return sorted(names)


def _is_path(name_or_path: str | Path) -> bool:
    path = Path(name_or_path)
    try:
        return path.suffix in (".yaml", ".yml") or path.exists()
    except (OSError, ValueError):  # e.g. an embedded NUL byte or a name too long for the OS
        return True


def read_yaml(name_or_path: str | Path) -> dict:
    """The recipe mapping from a YAML path, or from a shipped recipe name such as `experiments/mem1-n2`."""
    if _is_path(name_or_path):
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            hint = f" (shipped recipes are named without .yaml: {path.stem!r})" if path.stem in shipped_recipes() else ""
            raise RecipeError(f"recipe file {path} does not exist{hint}") from None
        except IsADirectoryError:
            raise RecipeError(f"recipe {path} is a directory; give a .yaml file inside it") from None
        except UnicodeDecodeError as exc:
            raise RecipeError(f"recipe file {path} is not UTF-8 text: {exc}") from None
        except (OSError, ValueError) as exc:
            raise RecipeError(f"recipe file {path} cannot be read: {exc}") from None
    else:
        res = resources.files("memrl.recipes").joinpath(*f"{name_or_path}.yaml".split("/"))
        if not res.is_file():
            shipped = shipped_recipes()
            close = difflib.get_close_matches(str(name_or_path), shipped, n=3, cutoff=0.5)
            hint = f"did you mean {_either(close)}? " if close else ""
            raise RecipeError(f"no recipe named {name_or_path!r}; {hint}shipped recipes: {', '.join(shipped)} "
                              "(or give a path to a .yaml file)")
        text = res.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {name_or_path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise RecipeError(f"recipe {name_or_path} is empty; write `{{}}` to run with every default "
                          "(see `memrl recipe show quickstart` for the keys)")
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {name_or_path} must be a mapping of sections (model:, env:, ...), "
                          f"got a YAML {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`line L, column C: what` from a PyYAML error (whose own text names an anonymous '<unicode string>')."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return str(exc)
    context = getattr(exc, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings; values are parsed as YAML scalars/lists (`x=3`, `y=[1,2]`, `z=null`)."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set expects key.path=value (e.g. train.steps=20), got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise RecipeError(f"--set {item!r}: key path {key!r} has an empty part; write e.g. algorithm.group_size=8")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {key}: value {raw!r} is not valid YAML ({_yaml_problem(exc)}); "
                              "quote strings that contain YAML syntax") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parts[: i + 1])
                raise RecipeError(f"--set {key}: {where!r} is a value ({node!r}), not a section with keys")
        node[parts[-1]] = value
    return data


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    data = apply_overrides(read_yaml(name_or_path), overrides or [])
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(explain(exc, source=str(name_or_path))) from None


def revalidate(recipe: Recipe, source: str) -> Recipe:
    """`recipe` checked again by the schema (after `model_copy` updates, which skip validation); RecipeError names
    the bad key."""
    try:
        return Recipe.model_validate(recipe.model_dump())
    except ValidationError as exc:
        raise RecipeError(explain(exc, source=source)) from None


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def explain(exc: ValidationError, source: str = "recipe") -> str:
    """A pydantic ValidationError as lines a person can act on: each problem at its key path, an unknown key with
    the closest valid keys and all valid keys of its section, a wrong value with what was given."""
    lines = [f"{source}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _fields_at(loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=3, cutoff=0.5)
            hint = f"did you mean {_either(close)}? " if close else ""
            lines.append(f"- unknown key {where!r}: {hint}valid keys here: {', '.join(valid)}")
        elif not loc:  # a combination check of the whole recipe: its message names the keys
            lines.append(f"- {err['msg'].removeprefix('Value error, ')}")
        else:
            got = repr(err.get("input"))
            got = got if len(got) <= 120 else got[:117] + "..."
            lines.append(f"- {where}: {err['msg'].removeprefix('Value error, ')} (got {got})")
    return "\n".join(lines)


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
